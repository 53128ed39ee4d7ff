"""Serving latency at 1M items: Recommender.recommend = user tower + ScaNN + exclusion.

The user tower, vocabularies and per-user defaults come from a real export (any
``twotower-export`` output); the corpus is grown to ``--num_items`` around the export's own
item embeddings (each extra item is a real item's embedding plus Gaussian noise,
normalised), so real user queries meet a 1M-item corpus of the same geometry. The index is
built and tuned with ``twotower.index.build_searcher`` on real user queries. Each request is
a known user by id (history and features from the export's defaults) excluding the items
in that history, k=10. Reports p50/p90/p99 latency single-threaded, throughput with 1 and
4 threads, the embedding call's share, and recall@10 of the served lists against exact
search with the same exclusions. When the export has a ranking head, the same requests are
timed again with two-stage serving (``--rerank_candidates`` retrieved, re-ranked; the
grown corpus's extra items are OOV ids to the head, which costs the same to score).

  python experiments/bench_serving.py --export_dir=/path/to/export --num_items=1000000
"""
import concurrent.futures
import os
import threading
import time

import numpy as np
from absl import app, flags
from report import emit

import twotower  # noqa: F401
from twotower import index as index_lib
from twotower import topk
from twotower.data.itemsets import ItemSets
from twotower.serving import Recommender

flags.DEFINE_string("export_dir", None, "A twotower-export directory (user tower + defaults).")
flags.DEFINE_integer("num_items", 1_000_000, "Corpus size to serve from.")
flags.DEFINE_float("item_noise", 1.0, "Noise norm of the synthetic items around real ones.")
flags.DEFINE_integer("requests", 2000, "Timed single-threaded requests.")
flags.DEFINE_float("thread_seconds", 10.0, "Duration of each multi-threaded run.")
flags.DEFINE_integer("k", 10, "Recommendations per request.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("rerank_candidates", 100, "Candidates the ranking head re-ranks.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.mark_flag_as_required("export_dir")
FLAGS = flags.FLAGS


def grown_corpus(base: np.ndarray, base_ids: np.ndarray, n: int, noise: float, seed: int):
  """The export's items plus n - len(base) noisy copies of them, unit norm."""
  rng = np.random.default_rng(seed)
  extra = n - len(base)
  out = np.empty((n, base.shape[1]), np.float32)
  out[:len(base)] = base
  for start in range(0, extra, 1 << 18):
    m = min(1 << 18, extra - start)
    x = base[rng.integers(len(base), size=m)] + rng.standard_normal(
        (m, base.shape[1]), np.float32) * (noise / np.sqrt(base.shape[1]))
    out[len(base) + start:len(base) + start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  ids = np.concatenate([base_ids, np.array([f"synthetic{i}" for i in range(extra)],
                                           dtype=object)])
  return out, ids


def timed_requests(rec, users, excludes, picks):
  """Per-request seconds of rec.recommend, and what each pick was served."""
  latencies, served = [], {}
  for p in picks:
    t0 = time.perf_counter()
    served[p] = rec.recommend(users[p], k=FLAGS.k, exclude_items=excludes[p])
    latencies.append(time.perf_counter() - t0)
  return latencies, served


def percentiles(ms: np.ndarray) -> dict:
  return {"p50": round(float(np.percentile(ms, 50)), 3),
          "p90": round(float(np.percentile(ms, 90)), 3),
          "p99": round(float(np.percentile(ms, 99)), 3),
          "max": round(float(ms.max()), 3)}


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  small = Recommender.load(FLAGS.export_dir)   # with its ranking head, if it has one
  defaults = small.defaults
  known = np.flatnonzero((defaults["history"] != "").any(axis=1))
  users = [{"user_id": str(defaults["user_id"][r])} for r in known]
  excludes = [[h for h in defaults["history"][r] if h] for r in known]
  queries = small.embed(users)

  t0 = time.perf_counter()
  corpus, ids = grown_corpus(small.index.embeddings, small.item_ids, FLAGS.num_items,
                             FLAGS.item_noise, FLAGS.seed)
  print(f"corpus {corpus.shape} in {time.perf_counter() - t0:.1f}s", flush=True)
  order = rng.permutation(len(queries))
  tune = queries[order[:len(order) // 2]]
  t0 = time.perf_counter()
  index = index_lib.build_searcher(corpus, sample_queries=tune, k=FLAGS.k)
  build = time.perf_counter() - t0
  index.item_ids = ids
  rec = Recommender(query_model=small.query_model, index=index, item_ids=ids,
                    defaults=defaults, manifest=small.manifest)
  rec.recommend(users[0], k=FLAGS.k, exclude_items=excludes[0])   # warm-up

  # Single-threaded latency over random requests.
  picks = rng.integers(len(users), size=FLAGS.requests)
  latencies, served = timed_requests(rec, users, excludes, picks)
  embed_latencies = []
  for p in picks[:500]:
    t0 = time.perf_counter()
    rec.embed([users[p]])
    embed_latencies.append(time.perf_counter() - t0)
  ms = np.array(latencies) * 1000
  two_stage = None
  if small.reranker is not None:
    ranked = Recommender(query_model=small.query_model, index=index, item_ids=ids,
                         defaults=defaults, manifest=small.manifest, reranker=small.reranker,
                         rerank_candidates=FLAGS.rerank_candidates)
    ranked.recommend(users[0], k=FLAGS.k, exclude_items=excludes[0])   # warm-up
    two_stage = percentiles(np.array(timed_requests(ranked, users, excludes, picks)[0]) * 1000)

  def throughput(threads: int) -> float:
    stop, count, lock = time.perf_counter() + FLAGS.thread_seconds, [0], threading.Lock()

    def worker(seed):
      local = np.random.default_rng(seed)
      n = 0
      while time.perf_counter() < stop:
        p = local.integers(len(users))
        rec.recommend(users[p], k=FLAGS.k, exclude_items=excludes[p])
        n += 1
      with lock:
        count[0] += n

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(worker, range(threads)))
    return count[0] / (time.perf_counter() - t0)

  qps1, qps4 = throughput(1), throughput(4)

  # Quality of what was served: recall@k against exact search with the same exclusions.
  rows = list(served)[:300]
  item_row = {item: i for i, item in enumerate(ids[:len(small.item_ids)])}
  exclude_rows = [np.array([item_row[h] for h in excludes[p]], np.int64) for p in rows]
  exact, _ = topk.top_k_items(queries[rows], corpus, FLAGS.k, ItemSets.from_lists(exclude_rows))
  hits = [len(set(ids[exact[i]]) & {item for item, _ in served[p]})
          for i, p in enumerate(rows)]

  report = {
      "num_items": FLAGS.num_items, "dim": int(corpus.shape[1]), "k": FLAGS.k,
      "cpus": os.cpu_count(), "export_dir": FLAGS.export_dir,
      "index_params": index.params, "build_and_tune_seconds": round(build, 1),
      "requests": FLAGS.requests,
      "mean_excluded": round(float(np.mean([len(excludes[p]) for p in picks])), 1),
      "latency_ms": percentiles(ms),
      "two_stage_latency_ms": two_stage,
      "rerank_candidates": FLAGS.rerank_candidates if two_stage else None,
      "embed_ms_p50": round(float(np.percentile(embed_latencies, 50)) * 1000, 3),
      "qps_1_thread": round(qps1, 1), "qps_4_threads": round(qps4, 1),
      "served_recall@k_vs_exact": round(float(np.sum(hits)) / (FLAGS.k * len(rows)), 4),
  }
  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
