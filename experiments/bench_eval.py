"""Exact full-corpus evaluation at scale: twotower.evaluate.retrieval_metrics vs a bare matmul.

Evaluation scores every item for every user, so its floor is the [U, D] x [D, N] float32
product itself. This times ``retrieval_metrics`` (masking, two-stage top-k, exact MRR ranks)
against that product alone at the same memory bound, [chunk, D] x [D, N] per chunk, four
ways: ``tf.matmul``; numpy's BLAS into a new array per chunk (``q @ items_t``); numpy's BLAS
on all cores into one preallocated output reused for every chunk (``np.matmul(...,
out=buffer)``, no page faults on fresh memory); and the same products split between worker
threads with a share of the cores each, exactly as the evaluation splits them (so eval over
it is the cost of everything but the products). Rounds are interleaved so that machine noise
hits all variants alike. It reports the median times, eval / each matmul, and the bar's
ratio ``eval_over_best_matmul``: eval over the fastest of the four on this machine (the
target is at most 1.5x).

Vectors are planted, not uniform: topic centroids on the unit sphere, each item a centroid
plus noise, each user a primary plus a weaker secondary topic plus noise, all unit norm.
Each user's ~20 excluded (training) items and ~5 targets are drawn from their two topics,
so the metrics are not all zero and the exclusion and MRR paths do real work.

Peak memory: ru_maxrss only grows, so each ``max_chunk_elements`` runs in a fresh child
process of this script, which builds the inputs, warms TensorFlow up on a tiny problem,
resets the peak (VmHWM, through ``/proc/self/clear_refs`` where the kernel allows it) and
reports the peak RSS minus the RSS before the evaluation, next to the score matrix a chunk
holds.

  python experiments/bench_eval.py --num_users=10000 --num_items=1000000 --dim=64 \
      --repeats=3 --output=/tmp/bench_eval.json
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import peak_memory
import planted
import tensorflow as tf
import threadpoolctl
from absl import app, flags
from report import emit

from twotower import evaluate, topk
from twotower.data.itemsets import ItemSets

flags.DEFINE_integer("num_users", 10_000, "Users evaluated.")
flags.DEFINE_integer("num_items", 1_000_000, "Corpus size.")
flags.DEFINE_integer("dim", 64, "Embedding dimension.")
flags.DEFINE_integer("num_topics", 1000, "Planted topic centroids.")
flags.DEFINE_float("noise", 1.25, "Norm of the noise relative to the topic part.")
flags.DEFINE_integer("num_exclude", 20, "Mean excluded (training) items per user.")
flags.DEFINE_integer("num_targets", 5, "Mean target items per user.")
flags.DEFINE_integer("repeats", 3, "Interleaved timing rounds.")
flags.DEFINE_integer("max_chunk_elements", evaluate.DEFAULT_MAX_CHUNK_ELEMENTS,
                     "Chunk size of the timed comparison.")
flags.DEFINE_list("memory_chunks", ["24", "25", "26", "27"],
                  "log2 of the max_chunk_elements values measured for memory (one child each); "
                  "empty to skip.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.DEFINE_integer("_child_chunk", 0, "Internal: measure one max_chunk_elements and exit.")
FLAGS = flags.FLAGS

KS = evaluate.DEFAULT_KS
_CHILD_PREFIX = "CHILD_REPORT "


def _draw_from_topics(rng, topics_per_pair, order, topic_start, topic_size, num_items):
  """One random item of each given topic (any item for a topic that has none)."""
  size = topic_size[topics_per_pair]
  pos = topic_start[topics_per_pair] + np.floor(rng.random(len(size)) * size).astype(np.int64)
  picked = order[np.minimum(pos, num_items - 1)]
  return np.where(size > 0, picked, rng.integers(num_items, size=len(size)))


def planted_problem(num_users, num_items, dim, num_topics, noise, num_exclude, num_targets,
                    seed):
  """(queries [U, D], items [N, D], targets, exclude): planted topics, float32, unit norm."""
  rng = np.random.default_rng(seed)
  topics = planted.topic_centroids(rng, num_topics, dim)
  items, item_topic = planted.planted_items(rng, topics, num_items, noise)
  queries, primary, secondary = planted.planted_queries(rng, topics, num_users, noise)

  order = np.argsort(item_topic, kind="stable")
  topic_size = np.bincount(item_topic, minlength=num_topics)
  topic_start = np.concatenate([[0], np.cumsum(topic_size)[:-1]])

  def item_sets(mean):
    lengths = rng.integers(mean - mean // 2, mean + mean // 2 + 1, size=num_users)
    rows = np.repeat(np.arange(num_users, dtype=np.int64), lengths)
    pair_topic = np.where(rng.random(len(rows)) < 0.7, primary[rows], secondary[rows])
    picked = _draw_from_topics(rng, pair_topic, order, topic_start, topic_size, num_items)
    return ItemSets.from_pairs(rows, picked, num_users)

  exclude = item_sets(num_exclude)
  targets = item_sets(num_targets)
  return queries, items, targets, exclude


def _build_inputs():
  return planted_problem(FLAGS.num_users, FLAGS.num_items, FLAGS.dim, FLAGS.num_topics,
                         FLAGS.noise, FLAGS.num_exclude, FLAGS.num_targets, FLAGS.seed)


def _users_per_chunk(max_chunk_elements: int, num_items: int) -> int:
  return max(1, max_chunk_elements // num_items)   # as topk.for_each_chunk does


def _tf_matmul_all(queries: np.ndarray, items_t: tf.Tensor, chunk: int) -> None:
  for start in range(0, len(queries), chunk):
    scores = tf.matmul(tf.constant(queries[start:start + chunk]), items_t)
  del scores   # eager CPU ops run synchronously: the product is complete here


def _numpy_matmul_all(queries: np.ndarray, items_t: np.ndarray, chunk: int) -> None:
  for start in range(0, len(queries), chunk):
    scores = queries[start:start + chunk] @ items_t
  del scores


def _numpy_matmul_into_buffer_all(queries: np.ndarray, items_t: np.ndarray,
                                  chunk: int) -> None:
  buffer = np.empty((min(chunk, len(queries)), items_t.shape[1]), np.float32)
  for start in range(0, len(queries), chunk):
    end = min(start + chunk, len(queries))
    np.matmul(queries[start:end], items_t, out=buffer[:end - start])


def _numpy_matmul_in_workers_all(queries: np.ndarray, items_t: np.ndarray,
                                 max_chunk_elements: int) -> None:
  """The bare products split between workers exactly as the evaluation splits them."""
  workers, chunk, blas_threads = topk._worker_plan(   # pylint: disable=protected-access
      _users_per_chunk(max_chunk_elements, items_t.shape[1]), len(queries))

  def work(w: int) -> None:   # worker w takes every workers-th chunk
    buffer = np.empty((chunk, items_t.shape[1]), np.float32)
    for start in range(w * chunk, len(queries), workers * chunk):
      end = min(start + chunk, len(queries))
      np.matmul(queries[start:end], items_t, out=buffer[:end - start])

  with threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas"):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(work, range(workers)))


def _child(max_chunk_elements: int) -> None:
  """Peak RSS increase and time of one evaluation in this (fresh) process."""
  queries, items, targets, exclude = _build_inputs()
  # TensorFlow's runtime (thread pools, kernels) starts on the first op; start it on a tiny
  # problem so that its fixed cost is not charged to the chunk size.
  evaluate.retrieval_metrics(queries[:2], items[:1000], ItemSets.from_lists([[0], [1]]),
                             ks=KS, max_chunk_elements=1000)
  baseline = peak_memory.status_bytes("VmRSS")
  reset = peak_memory.reset_peak_rss()
  peak_before = peak_memory.peak_rss_bytes()
  start = time.perf_counter()
  metrics = evaluate.retrieval_metrics(queries, items, targets, exclude, ks=KS,
                                       max_chunk_elements=max_chunk_elements)
  seconds = time.perf_counter() - start
  peak = peak_memory.peak_rss_bytes()
  chunk = _users_per_chunk(max_chunk_elements, len(items))
  score_bytes = chunk * len(items) * 4
  report = {
      "max_chunk_elements": max_chunk_elements,
      "users_per_chunk": chunk,
      "seconds": round(seconds, 2),
      "baseline_rss_bytes": baseline,
      "peak_rss_increase_bytes": peak - baseline,
      # Without a reset the peak may be the input generation's, so this is an upper bound.
      "peak_was_reset": reset,
      "peak_before_eval_bytes": peak_before,
      "chunk_score_bytes": score_bytes,
      "peak_increase_over_chunk_scores": round((peak - baseline) / score_bytes, 2),
      "recall@100": round(metrics["recall@100"], 5),
  }
  print(_CHILD_PREFIX + json.dumps(report), flush=True)


def _run_child(max_chunk_elements: int) -> dict:
  args = [sys.executable, os.path.abspath(__file__), f"--_child_chunk={max_chunk_elements}",
          f"--num_users={FLAGS.num_users}", f"--num_items={FLAGS.num_items}",
          f"--dim={FLAGS.dim}", f"--num_topics={FLAGS.num_topics}", f"--noise={FLAGS.noise}",
          f"--num_exclude={FLAGS.num_exclude}", f"--num_targets={FLAGS.num_targets}",
          f"--seed={FLAGS.seed}"]
  proc = subprocess.run(args, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(_CHILD_PREFIX):
      return json.loads(line[len(_CHILD_PREFIX):])
  raise RuntimeError(f"child for max_chunk_elements={max_chunk_elements} failed "
                     f"(rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv):
  del argv
  if FLAGS._child_chunk:   # pylint: disable=protected-access
    _child(FLAGS._child_chunk)   # pylint: disable=protected-access
    return
  t0 = time.perf_counter()
  queries, items, targets, exclude = _build_inputs()
  print(f"generated {items.shape} items, {queries.shape} users, "
        f"{len(exclude.indices)} exclusions, {len(targets.indices)} targets in "
        f"{time.perf_counter() - t0:.1f}s", flush=True)
  max_chunk = FLAGS.max_chunk_elements
  chunk = _users_per_chunk(max_chunk, len(items))
  items_t_np = np.ascontiguousarray(items.T)
  items_t = tf.constant(items_t_np)

  # Warm-up: tracing of the chunk function (full and last partial chunk) and BLAS start-up.
  warm_users = min(len(queries), 2 * chunk + 1)
  evaluate.retrieval_metrics(queries[:warm_users], items, targets.subset(np.arange(warm_users)),
                             exclude.subset(np.arange(warm_users)), ks=KS,
                             max_chunk_elements=max_chunk)
  _tf_matmul_all(queries[:warm_users], items_t, chunk)
  _numpy_matmul_all(queries[:warm_users], items_t_np, chunk)
  _numpy_matmul_into_buffer_all(queries[:warm_users], items_t_np, chunk)
  _numpy_matmul_in_workers_all(queries[:warm_users], items_t_np, max_chunk)

  metrics = {}

  def run_eval():
    metrics.update(evaluate.retrieval_metrics(queries, items, targets, exclude, ks=KS,
                                              max_chunk_elements=max_chunk))

  variants = {
      "eval": run_eval,
      "tf_matmul": lambda: _tf_matmul_all(queries, items_t, chunk),
      "numpy_matmul": lambda: _numpy_matmul_all(queries, items_t_np, chunk),
      "numpy_matmul_into_buffer": lambda: _numpy_matmul_into_buffer_all(queries, items_t_np,
                                                                         chunk),
      "numpy_matmul_in_workers": lambda: _numpy_matmul_in_workers_all(queries, items_t_np,
                                                                      max_chunk),
  }
  seconds = {name: [] for name in variants}
  for r in range(FLAGS.repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      fn()
      seconds[name].append(time.perf_counter() - start)
      print(f"round {r}: {name} {seconds[name][-1]:.2f}s", flush=True)
  med = {k: statistics.median(v) for k, v in seconds.items()}
  flops = 2.0 * len(queries) * len(items) * items.shape[1]
  matmuls = ("tf_matmul", "numpy_matmul", "numpy_matmul_into_buffer", "numpy_matmul_in_workers")
  best = min(matmuls, key=lambda k: med[k])

  report = {
      "num_users": len(queries), "num_items": len(items), "dim": items.shape[1],
      "cpus": os.cpu_count(), "ks": list(KS), "repeats": FLAGS.repeats,
      "max_chunk_elements": max_chunk, "users_per_chunk": chunk,
      "exclusions_per_user": round(len(exclude.indices) / len(queries), 2),
      "targets_per_user": round(len(targets.indices) / len(queries), 2),
      "metrics": {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()},
      "median_seconds": {k: round(v, 3) for k, v in med.items()},
      "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
      "matmul_gflops": {k: round(flops / med[k] / 1e9, 1) for k in matmuls},
      "eval_over_tf_matmul": round(med["eval"] / med["tf_matmul"], 3),
      "eval_over_numpy_matmul": round(med["eval"] / med["numpy_matmul"], 3),
      "eval_over_numpy_matmul_into_buffer": round(med["eval"] / med["numpy_matmul_into_buffer"],
                                                  3),
      "eval_over_numpy_matmul_in_workers": round(med["eval"] / med["numpy_matmul_in_workers"], 3),
      "best_matmul": best,
      "eval_over_best_matmul": round(med["eval"] / med[best], 3),
      "eval_over_best_matmul_target": 1.5,
      "items_float32_bytes": int(items.nbytes),
  }
  memory = []
  for log2 in FLAGS.memory_chunks:
    memory.append(_run_child(1 << int(log2)))
    print(f"memory: {memory[-1]}", flush=True)
  report["memory_by_chunk"] = memory

  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
