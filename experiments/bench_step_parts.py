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
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags
from report import emit
from train_setup import config_from_flags, twotower_model

from twotower.data import pipeline
from twotower.data import prepare as prepare_lib

flags.DEFINE_integer("num_batches", 60, "Materialised batches timed per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
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


def main(argv):
  del argv
  config = config_from_flags()
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  batches = list(pipeline.training_dataset(data, batch_size=FLAGS.batch_size,
                                           history_length=config.data.history_length,
                                           seed=0, epoch=0).take(FLAGS.num_batches))
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
