"""Run as a script: loss and gradients under MirroredStrategy on 2 logical CPUs vs one
device on the same global batch. Prints a JSON report (used by test_distributed.py)."""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import json  # noqa: E402

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

import twotower  # noqa: E402,F401
from twotower.config import Config  # noqa: E402
from twotower.data import pipeline, types  # noqa: E402
from twotower.data.prepare import prepare  # noqa: E402
from twotower.model import retrieval  # noqa: E402


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


def main():
  config = Config()
  config.loss.queue_size = 64
  config.loss.queue_warmup_steps = 0
  config.loss.frequency = sys.argv[1] if len(sys.argv) > 1 else "static"
  config.model.id_dropout = 0.0
  data = _data(config)
  batches = list(pipeline.training_dataset(data, batch_size=32, history_length=5, seed=0)
                 .take(3))

  def build():
    tf_keras.utils.set_random_seed(0)
    model = retrieval.build_retrieval_model(data, config)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1))
    model.compute_loss(batches[0])
    return model

  single = build()
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    multi = build()
  multi.set_weights(single.get_weights())

  def grads(model, batch):
    with tf.GradientTape() as tape:
      loss = model.compute_loss(batch, training=True)
    return loss, tape.gradient(loss, model.trainable_variables)

  report = {"loss": [], "grad": [], "queue": []}
  single_step = tf.function(single.train_step)

  @tf.function
  def multi_step(batch):
    return strategy.run(multi.train_step, args=(batch,))

  @tf.function
  def multi_grads(batch):
    return strategy.run(lambda b: grads(multi, b), args=(batch,))

  for batch in batches:
    loss_s, grads_s = grads(single, batch)
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(
            lambda t: tf.split(t, 2)[ctx.replica_id_in_sync_group], batch))
    loss_m, grads_m = multi_grads(dist)
    loss_m = strategy.reduce("SUM", loss_m, axis=None)
    report["loss"].append(float(abs(loss_m - loss_s)))
    diffs = []
    for g_s, g_m in zip(grads_s, grads_m):
      g_m = strategy.reduce("SUM", g_m, axis=None)
      g_s = tf.convert_to_tensor(g_s)
      diffs.append(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g_m) - g_s))))
    report["grad"].append(max(diffs))
    single_step(batch)
    multi_step(dist)
    q_s = single.task.queue.ordered()
    q_m = [strategy.experimental_local_results(v)
           for v in (multi.task.queue.embeddings, multi.task.queue.ids)]
    order_m = multi.task.queue.ordered()
    report["queue"].append(float(tf.reduce_max(tf.abs(q_s[0] - order_m[0]))) +
                           float(tf.reduce_sum(tf.cast(q_s[1] != order_m[1], tf.float32))))
    # Both replicas hold the same queue.
    report.setdefault("replicas_agree", []).append(
        bool(np.array_equal(q_m[1][0].numpy(), q_m[1][1].numpy())))
  print(json.dumps(report))


if __name__ == "__main__":
  main()
