"""What each part of the CBNS loss costs per training step, on fixed batches.

Whole-epoch rounds (bench_train.py) include the input pipeline, which shares the cores with
the step and makes ratios swing between runs. This times ``train_step`` alone over the same
materialised batches, interleaved rounds, for in-batch and CBNS (M = 8B, with its query
memory of M rows, the default) with each part of the loss switched off in turn: the query
memory, the known-positive masks, logQ, the batch-mean centering. The differences are what
each part costs; CBNS's extra cost over in-batch should not grow with the towers (neither
the queue entries nor the remembered queries are encoded).

It also times, in the same rounds, the softmax arithmetic alone on random embeddings of the
step's shapes, with no towers, masks or corrections: the [B, B] or [B, B + M] logits, the
softmax cross-entropy, the gradients to the query and in-batch candidates, and for CBNS the
query memory's [M, B] logits, their log-sum-exp and gradient to the candidates. Once as
twotower writes it in TensorFlow, and once in numpy (one BLAS product each way, the softmax
in place): the arithmetic every implementation must do, at this machine's BLAS speed. The
numpy difference is the floor of CBNS's extra cost here: ``lowest_cbns_over_in_batch`` is
the ratio CBNS would reach if nothing but that arithmetic were added to the in-batch step.

  python experiments/bench_step_parts.py --dataset=movielens-100k --batch_size=512
  python experiments/bench_step_parts.py --dataset=movielens-100k --batch_size=512 \\
      --item_layers=1024,1024
  python experiments/bench_step_parts.py --dataset=synthetic --batch_size=256 \\
      --synthetic_users=10000 --synthetic_items=200000 --synthetic_interactions=1000000

With ``--overhead`` it times instead what surrounds the arithmetic of the default step (the
automatic queue and query memory), for the 1M-item profile of issue 18: the step as the
training loop calls it (one host sync and the loop's bookkeeping per step), the same step
fed by the ``tf.data`` pipeline, ten steps per ``tf.function`` call, ``jit_compile``, the
gradients without the optimizer update, the forward pass alone, the towers alone, Keras's
dense Adam against ``lazy_adam``, and the bare products; it also checks which gradients are
row-sparse and how many rows of the item table one step rewrites.

  python experiments/bench_step_parts.py --overhead --dataset=synthetic --batch_size=1024 \\
      --synthetic_users=200000 --synthetic_items=1000000 --synthetic_interactions=2000000
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import copy
import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags
from report import emit
from train_setup import config_from_flags, twotower_model

from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.model import retrieval
from twotower.training import runner

flags.DEFINE_integer("num_batches", 60, "Materialised batches timed per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.DEFINE_bool("overhead", False, "Time what surrounds the default step's arithmetic "
                  "(loop syncs, input, steps per call, XLA, optimizer) instead of the loss's "
                  "parts.")
flags.DEFINE_integer("large_table_rows", 100_000, "--overhead: variables with at least this "
                     "many rows are checked for row-sparse updates.")
flags.DEFINE_integer("steps_per_call", 10, "--overhead: steps per tf.function call of the "
                     "multi-step variant.")
FLAGS = flags.FLAGS

# name -> (queue size in batches, loss switches)
VARIANTS = {
    "in_batch": (0, {}),
    "in_batch_no_masks": (0, {"mask_history": False, "mask_accidental_hits": False}),
    "cbns": (8, {}),
    "cbns_no_memory": (8, {"query_memory_size": 0}),
    "cbns_no_masks": (8, {"mask_history": False, "mask_accidental_hits": False}),
    "cbns_no_logq": (8, {"logq": False}),
    "cbns_no_centering": (8, {"queue_centering": False}),
}


def _timed_steps(data, config, batches, queue_batches, switches):
  model = twotower_model(data, config, queue_batches * config.train.batch_size, **switches)
  step = tf.function(model.train_step, reduce_retracing=True)

  def run():
    for batch in batches:
      out = step(batch)
    float(out["loss"])   # the last step has finished
  return run


def _bare_softmax_tf(steps, batch, queue, dim, temperature):
  """The [B, B + M] logits, sparse softmax cross-entropy and the gradients to the query and
  the in-batch candidates, written as ``CrossBatchSoftmax.logits`` writes them (a bias
  column, one matmul per block), and with a queue the query memory's [M, B] log-sum-exp
  (``CrossBatchSoftmax.memory_loss``), with nothing else."""
  rng = np.random.default_rng(0)
  unit = lambda n: tf.math.l2_normalize(rng.standard_normal((n, dim), np.float32), axis=1)
  with_bias = lambda x: tf.concat([x, tf.zeros_like(x[:, :1])], axis=1)
  query, candidates, queued = unit(batch), with_bias(unit(batch)), with_bias(unit(queue))
  remembered = unit(queue) * (1.0 / temperature)
  labels = tf.range(batch)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch([query, candidates])
      q = tf.concat([query * (1.0 / temperature), -tf.ones_like(query[:, :1])], axis=1)
      logits = tf.matmul(q, candidates, transpose_b=True)
      if queue:
        logits = tf.concat([logits, tf.matmul(q, queued, transpose_b=True)], axis=1)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
      if queue:
        loss += tf.reduce_sum(tf.reduce_logsumexp(
            tf.matmul(remembered, candidates[:, :-1], transpose_b=True), axis=1)) / batch
    return tape.gradient(loss, [query, candidates])

  def run():
    for _ in range(steps):
      out = step()
    out[0].numpy()
  return run


def _bare_softmax_numpy(steps, batch, queue, dim, temperature):
  """The same arithmetic in numpy: one BLAS product forward, one per gradient, and the
  softmaxes in place."""
  rng = np.random.default_rng(0)
  query = rng.standard_normal((batch, dim), np.float32) / temperature
  keys = rng.standard_normal((batch + queue, dim), np.float32)
  remembered = rng.standard_normal((queue, dim), np.float32) / temperature
  rows = np.arange(batch)

  def softmax_in_place(p):
    p -= p.max(axis=1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)

  def run():
    for _ in range(steps):
      p = query @ keys.T
      softmax_in_place(p)
      p[rows, rows] -= 1.0          # d loss / d logits (times B)
      p @ keys                      # to the query
      p[:, :batch].T @ query        # to the in-batch candidates
      if queue:                     # the query memory: its softmax over the batch, to the
        p = remembered @ keys[:batch].T                          # candidates
        softmax_in_place(p)
        p.T @ remembered
  return run


def _runner_like(step, batches, model, state, fed=None):
  """The step as runner.Runner calls it: the loss and gradient norm read back on the host
  after every step, the loop state's batch counter and the optimizer's step read. ``fed``:
  a function returning a fresh iterator of the same batches from the tf.data pipeline."""
  def run():
    for batch in (fed() if fed is not None else batches):
      out = step(batch)
      float(out["loss"]), float(out["grad_norm"])
      state.batches_done.assign_add(1)
      runner.number(model.optimizer.iterations)
  return run


def _steps_per_call(model, batches, state, k):
  """k steps inside one tf.function call (unrolled), the host syncs once per call."""
  @tf.function
  def steps(group):
    outs = [model.train_step(batch) for batch in group]
    return {"loss": tf.stack([o["loss"] for o in outs]),
            "grad_norm": tf.stack([o["grad_norm"] for o in outs])}
  groups = [tuple(batches[i:i + k]) for i in range(0, len(batches) - k + 1, k)]

  def run():
    for group in groups:
      out = steps(group)
      out["loss"].numpy(), out["grad_norm"].numpy()
      state.batches_done.assign_add(len(group))
      runner.number(model.optimizer.iterations)
  return run


def _gradients_only(model, batches, forward_only=False):
  """The loss and its gradients (or the loss alone), no optimizer update and no enqueue."""
  @tf.function
  def grads(batch):
    if forward_only:
      return model._forward(batch, training=True)[0]
    with tf.GradientTape() as tape:
      loss = model._forward(batch, training=True)[0]
    return tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))

  def run():
    for batch in batches:
      out = grads(batch)
    float(out)
  return run


def _towers_only(model, batches):
  """Both towers forward and backward (item tower on each distinct item once, as the step
  does) under the cheapest loss that touches every output: the towers' share."""
  @tf.function
  def grads(batch):
    with tf.GradientTape() as tape:
      query = model.user_tower(batch["user"], training=True)
      items = retrieval.encode_each_item_once(model.item_tower, batch["item"], True)
      loss = tf.reduce_sum(query * items)
    return tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))

  def run():
    for batch in batches:
      out = grads(batch)
    float(out)
  return run


def _sparsity(model, batch) -> dict:
  """Which trainable variables get row-sparse (IndexedSlices) gradients, and how many rows
  of each variable over 100k rows one real step changes (the table and both Adam slots)."""
  with tf.GradientTape() as tape:
    loss = model._forward(batch, training=True)[0]
  grads = tape.gradient(loss, model.trainable_variables)
  kinds = {v.name: type(g).__name__ for v, g in zip(model.trainable_variables, grads)}
  big = [v for v in model.trainable_variables if v.shape[0] >= FLAGS.large_table_rows]
  opt = model.optimizer
  slot = lambda v, kind: getattr(opt, kind)[opt._index_dict[opt._var_key(v)]]
  slots = {v.name: [slot(v, "_momentums"), slot(v, "_velocities")] for v in big}
  before = {v.name: [x.numpy().copy() for x in [v] + slots[v.name]] for v in big}
  tf.function(model.train_step)(batch)
  changed = {}
  for v in big:
    after = [x.numpy() for x in [v] + slots[v.name]]
    changed[v.name] = {"rows": int(v.shape[0]),
                       "rows_changed": [int((a != b).any(axis=1).sum())
                                        for a, b in zip(after, before[v.name])]}
  return {"gradient_types": kinds, "large_tables": changed,
          "distinct_items_in_batch": int(tf.size(tf.unique(batch["item"]["item_id"])[0]))}


def overhead(data, config, batches) -> None:
  """--overhead: the default step's arithmetic against what surrounds it."""
  batch_size = config.train.batch_size
  queue = retrieval.resolve_queue_size(config.loss, batch_size, data.num_items)
  model = twotower_model(data, config, queue)
  dense = copy.deepcopy(config)
  dense.train.optimizer = "adam"
  dense_model = twotower_model(data, dense, queue)
  state = runner.LoopState()
  step = tf.function(model.train_step, reduce_retracing=True)
  # Built once, as the loop builds one per epoch; each round iterates it afresh.
  dataset = pipeline.training_dataset(data, batch_size=batch_size, seed=0, epoch=0,
                                      history_length=config.data.history_length)
  fed = lambda: iter(dataset.take(len(batches)))
  variants = {
      "runner_like": _runner_like(step, batches, model, state),
      "runner_like_fed_by_tf_data": _runner_like(step, batches, model, state, fed),
      "one_sync_per_round": _timed_steps_of(step, batches),
      f"{FLAGS.steps_per_call}_steps_per_call": _steps_per_call(model, batches, state,
                                                              FLAGS.steps_per_call),
      "dense_keras_adam": _runner_like(tf.function(dense_model.train_step), batches,
                                       dense_model, state),
      "gradients_no_update": _gradients_only(model, batches),
      "forward_only": _gradients_only(model, batches, forward_only=True),
      "towers_only": _towers_only(model, batches),
      "bare_tf_products": _bare_softmax_tf(len(batches), batch_size, queue,
                                           config.model.embedding_dim, config.loss.temperature),
      "bare_numpy_products": _bare_softmax_numpy(len(batches), batch_size, queue,
                                                 config.model.embedding_dim,
                                                 config.loss.temperature),
  }
  xla_error = None
  try:
    xla = tf.function(model.train_step, jit_compile=True)
    xla(batches[0])
    variants["xla_jit_compile"] = _runner_like(xla, batches, model, state)
  except Exception as e:   # noqa: BLE001  (the report says why XLA did not run)
    xla_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  sparsity = _sparsity(model, batches[0])
  pipeline_alone = lambda: [None for _ in fed()]
  variants["tf_data_pipeline_alone"] = pipeline_alone
  for run in variants.values():   # warm-up: tracing
    run()
  ms = {name: [] for name in variants}
  for _ in range(FLAGS.rounds):
    for name, run in variants.items():
      start = time.perf_counter()
      run()
      ms[name].append((time.perf_counter() - start) / len(batches) * 1e3)
  med = {name: statistics.median(v) for name, v in ms.items()}
  base = med["runner_like"]
  emit({
      "dataset": FLAGS.dataset, "num_items": data.num_items, "batch_size": batch_size,
      "queue_size": queue,
      "query_memory_size": retrieval.resolve_query_memory_size(config.loss, queue),
      "batches": len(batches), "rounds": FLAGS.rounds,
      "median_ms_per_step": {k: round(v, 2) for k, v in med.items()},
      "rounds_ms_per_step": {k: [round(x, 2) for x in v] for k, v in ms.items()},
      "speed_over_runner_like": {k: round(base / v, 3) for k, v in med.items()},
      "share_of_runner_like": {
          "towers": round(med["towers_only"] / base, 3),
          "bare_products_numpy": round(med["bare_numpy_products"] / base, 3),
          "bare_products_tf": round(med["bare_tf_products"] / base, 3),
          "optimizer_update_and_enqueue": round(
              (med["one_sync_per_round"] - med["gradients_no_update"]) / base, 3),
          "host_syncs_and_loop_bookkeeping": round(
              (base - med["one_sync_per_round"]) / base, 3)},
      "xla_error": xla_error, **sparsity,
  }, FLAGS.output)


def _timed_steps_of(step, batches):
  def run():
    for batch in batches:
      out = step(batch)
    float(out["loss"])
  return run


def main(argv):
  del argv
  config = config_from_flags()
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  batches = list(pipeline.training_dataset(data, batch_size=FLAGS.batch_size,
                                           history_length=config.data.history_length,
                                           seed=0, epoch=0).take(FLAGS.num_batches))
  if FLAGS.overhead:
    return overhead(data, config, batches)
  variants = {name: _timed_steps(data, config, batches, queue, switches)
              for name, (queue, switches) in VARIANTS.items()}
  for queue, suffix in ((0, "in_batch"), (8 * FLAGS.batch_size, "cbns")):
    shape = (len(batches), FLAGS.batch_size, queue, config.model.embedding_dim,
             config.loss.temperature)
    variants[f"bare_tf_{suffix}"] = _bare_softmax_tf(*shape)
    variants[f"bare_numpy_{suffix}"] = _bare_softmax_numpy(*shape)
  for run in variants.values():   # warm-up: tracing
    run()
  ms = {name: [] for name in variants}
  for _ in range(FLAGS.rounds):
    for name, run in variants.items():
      start = time.perf_counter()
      run()
      ms[name].append((time.perf_counter() - start) / len(batches) * 1e3)
  med = {name: statistics.median(v) for name, v in ms.items()}
  extra = lambda prefix: med[f"{prefix}_cbns"] - med[f"{prefix}_in_batch"]
  emit({
      "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size,
      "queue_size": 8 * FLAGS.batch_size, "item_layers": list(config.model.item_layers),
      "batches": len(batches), "rounds": FLAGS.rounds,
      "median_ms_per_step": {k: round(v, 1) for k, v in med.items()},
      "cbns_extra_ms": round(med["cbns"] - med["in_batch"], 1),
      "cbns_over_in_batch": round(med["cbns"] / med["in_batch"], 3),
      "ms_of_query_memory": round(med["cbns"] - med["cbns_no_memory"], 1),
      "cbns_no_memory_over_in_batch": round(med["cbns_no_memory"] / med["in_batch"], 3),
      "ms_of_masks_with_queue": round(med["cbns"] - med["cbns_no_masks"], 1),
      "ms_of_logq_with_queue": round(med["cbns"] - med["cbns_no_logq"], 1),
      "ms_of_centering_with_queue": round(med["cbns"] - med["cbns_no_centering"], 1),
      "bare_softmax_extra_ms": {"tensorflow": round(extra("bare_tf"), 1),
                                "numpy": round(extra("bare_numpy"), 1)},
      "lowest_cbns_over_in_batch": round((med["in_batch"] + extra("bare_numpy"))
                                         / med["in_batch"], 3),
  }, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
