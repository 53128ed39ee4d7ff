"""Run as a script: training steps under MirroredStrategy on 2 logical CPUs vs one device on
the same global batches. Prints a JSON report (used by test_distributed.py).

``run_check`` is shared with multi_worker_check.py, which runs it in each worker of a
MultiWorkerMirroredStrategy. It only uses the strategy's replica ids, so the same code covers
replicas on one host and replicas spread over processes.
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import json  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from twotower.config import Config  # noqa: E402
from twotower.data import pipeline, types  # noqa: E402
from twotower.data.prepare import prepare  # noqa: E402
from twotower.model import retrieval  # noqa: E402

GLOBAL_BATCH = 32
STEPS = 3


def _data(config):
  rng = np.random.default_rng(0)
  n = 3000
  users = rng.integers(0, 80, n)
  items = rng.integers(0, 300, n)
  inter = types.Interactions("mem", np.array([f"u{u}" for u in users], object),
                             np.array([f"i{i}" for i in items], object),
                             rng.integers(0, 10**6, n).astype(np.int64))
  item_table = types.Table("mem", {"item_id": np.array([f"i{i}" for i in range(300)], object),
                                   "genre": np.array([f"g{i % 7}" for i in range(300)], object)},
                           {"item_id": types.TOKEN, "genre": types.TOKEN},
                           np.arange(300) + 2)
  return prepare(types.RawDataset("mem", inter, None, item_table), config.data)


def _config(frequency):
  config = Config()
  config.loss.queue_size = 64           # wraps around within STEPS steps
  config.loss.query_memory_size = 64    # and so does the query memory
  config.loss.queue_warmup_steps = 0
  config.loss.frequency = frequency
  config.loss.mixed_negatives = 8        # identical on every replica, not gathered
  config.model.id_dropout = 0.0
  return config


def _grads(model, batch):
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  return loss, tape.gradient(loss, model.trainable_variables)


def _max_diff(a, b):
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return float("inf")
  return float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))


def _queue_diff(q_a, q_b):
  """Max difference of the embeddings and log q, plus the number of differing ids."""
  if q_a[1].shape != q_b[1].shape:
    return float("inf")
  return (max(_max_diff(q_a[0], q_b[0]), _max_diff(q_a[2], q_b[2])) +
          float(np.sum(np.asarray(q_a[1]) != np.asarray(q_b[1]))))


def run_check(strategy, frequency):
  """STEPS training steps of a model under ``strategy`` and of a copy on one device, fed the
  same global batches (replica r gets the r-th slice).

  Returns (report, state): ``report`` has per step the max differences between the two
  (loss, gradients, queue contents in order, frequency-estimator variables), whether this
  process's replicas hold the same queue and estimator, and whether
  ``experimental_distribute_dataset`` (as the Trainer uses it) hands replica r the r-th
  slice; ``state`` has this process's multi-replica values as numpy arrays, to compare
  processes.
  """
  config = _config(frequency)
  data = _data(config)
  dataset = pipeline.training_dataset(data, batch_size=GLOBAL_BATCH, history_length=5,
                                      seed=0, drop_remainder=True).take(STEPS)
  batches = list(dataset)
  num_replicas = strategy.num_replicas_in_sync

  def build():
    tf_keras.utils.set_random_seed(0)
    model = retrieval.build_retrieval_model(data, config)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1))
    model.compute_loss(batches[0])
    return model

  single = build()
  with strategy.scope():
    multi = build()
  multi.set_weights(single.get_weights())
  single_step = tf.function(single.train_step)
  local = strategy.experimental_local_results

  @tf.function
  def multi_step(batch):
    return strategy.run(multi.train_step, args=(batch,))

  @tf.function
  def multi_grads(batch):
    def replica_fn(b):
      loss, grads = _grads(multi, b)
      # One batched all-reduce: every replica then holds the global loss and gradients.
      return tf.distribute.get_replica_context().all_reduce(
          "SUM", [loss] + [tf.convert_to_tensor(g) for g in grads])
    return strategy.run(replica_fn, args=(batch,))

  def slice_of(batch, replica):
    return tf.nest.map_structure(lambda t: tf.split(t, num_replicas)[replica], batch)

  replica_ids = [int(r) for r in local(strategy.run(
      lambda: tf.distribute.get_replica_context().replica_id_in_sync_group))]
  report = {key: [] for key in ("loss", "grad", "queue", "frequency", "replicas_agree",
                                "dataset_slices")}
  state = {}
  for step, (batch, distributed) in enumerate(
      zip(batches, strategy.experimental_distribute_dataset(dataset))):
    report["dataset_slices"].append(all(
        all(tf.nest.flatten(tf.nest.map_structure(
            lambda a, b: bool(np.array_equal(a.numpy(), b.numpy())), got, slice_of(batch, r))))
        for got, r in zip(local(distributed), replica_ids)))
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx, batch=batch: slice_of(batch, ctx.replica_id_in_sync_group))
    loss_s, grads_s = _grads(single, batch)
    reduced = [np.asarray(local(value)[0]) for value in multi_grads(dist)]
    report["loss"].append(_max_diff(reduced[0], loss_s))
    report["grad"].append(max(_max_diff(g_m, tf.convert_to_tensor(g_s))
                              for g_m, g_s in zip(reduced[1:], grads_s)))
    single_step(batch)
    multi_step(dist)
    values = {"loss": reduced[0], "grads": np.concatenate([g.ravel() for g in reduced[1:]])}
    replicated = list(multi.frequency.variables)
    diffs = []
    for name in ("queue", "query_memory"):    # the item queue and the query memory
      q_s = [t.numpy() for t in getattr(single.task, name).ordered()]
      q_m = [t.numpy() for t in getattr(multi.task, name).ordered()]
      diffs.append(_queue_diff(q_s, q_m))
      memory = getattr(multi.task, name)
      replicated += [memory.embeddings, memory.ids, memory.log_q, memory.count]
      values.update({f"{name}_embeddings": q_m[0], f"{name}_ids": q_m[1],
                     f"{name}_log_q": q_m[2]})
    report["queue"].append(max(diffs))
    report["frequency"].append(max(
        [_max_diff(v_m, v_s) for v_m, v_s in zip(multi.frequency.variables,
                                                 single.frequency.variables)], default=0.0))
    report["replicas_agree"].append(all(
        all(np.array_equal(copies[0].numpy(), c.numpy()) for c in copies)
        for copies in map(local, replicated)))
    values.update({f"frequency_{i}": v.numpy() for i, v in enumerate(multi.frequency.variables)})
    state.update({f"{key}_step{step}": value for key, value in values.items()})
  return report, state


def run_trainer(workdir):
  """The full training loop (checkpoints, drift warm-up, validation) without and with
  --distribution=mirrored, on a global batch that two replicas split unevenly (17 + 16)."""
  from twotower.jobs import train as train_job  # pylint: disable=import-outside-toplevel
  report = {}
  for distribution in ("none", "mirrored"):
    config = _config("streaming")
    config.train.batch_size = GLOBAL_BATCH + 1
    config.train.epochs = 2
    config.train.progress = False
    config.train.distribution = distribution
    config.train.drift_every_steps = 5
    config.loss.queue_warmup_drift = 1e6    # on at the first drift measured
    log = train_job.train(config, os.path.join(workdir, distribution), _data(config))
    report[distribution] = {"final": log["final"], "losses": [e["loss"] for e in log["epochs"]],
                            "queue_enabled_at_step": log.get("queue_enabled_at_step")}
  return report


def main():
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  if sys.argv[1] == "trainer":
    print(json.dumps(run_trainer(sys.argv[2])))
    return
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  report, _ = run_check(strategy, sys.argv[1])
  print(json.dumps(report))


if __name__ == "__main__":
  main()
