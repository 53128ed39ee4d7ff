"""Candidate index at scale: ScaNN (twotower.index.build_searcher) vs numpy brute force.

Vectors come from a planted model, not uniform noise: C topic centroids on the unit sphere,
each item a centroid plus Gaussian noise, normalised; each query mixes a primary and a
weaker secondary topic plus noise (a user with two interests). The searcher is tuned on one
set of queries and reported on another. Recall@k is against exact search; QPS is measured
side by side with numpy brute force (float32 matmul + argpartition) in the same process,
single query (a Python loop of one-query calls) and batched (one call over all queries).
Also reports build time, the serialized index size and the resident memory the loaded
searcher adds, against the float32 matrix (float32 exact reordering keeps a full copy of it,
so the index is a little larger than the matrix; the AH codes alone are D/4 bytes a vector).

  python experiments/bench_index.py --num_items=1000000 --dim=64
"""
import os
import tempfile
import time

import numpy as np
import peak_memory
import planted
from absl import app, flags
from report import emit

import twotower  # noqa: F401
from twotower import index as index_lib
from twotower import topk
from twotower.index import storage

flags.DEFINE_integer("num_items", 1_000_000, "Corpus size.")
flags.DEFINE_integer("dim", 64, "Embedding dimension.")
flags.DEFINE_integer("num_topics", 1000, "Planted topic centroids.")
flags.DEFINE_float("item_noise", 1.25, "Norm of an item's noise relative to its centroid.")
flags.DEFINE_float("query_noise", 1.25, "Norm of a query's noise relative to its topics.")
flags.DEFINE_integer("num_queries", 1000, "Tuning queries (as many again are reported on).")
flags.DEFINE_float("recall_target", 0.95, "Recall@10 target for tuning.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS


def planted_vectors(num_items, num_queries, dim, num_topics, item_noise, query_noise, seed):
  """(items [N, D], queries [Q, D]) from the planted topic model, float32, unit norm."""
  rng = np.random.default_rng(seed)
  topics = planted.topic_centroids(rng, num_topics, dim)
  items, _ = planted.planted_items(rng, topics, num_items, item_noise)
  queries, _, _ = planted.planted_queries(rng, topics, num_queries, query_noise)
  return items, queries


def main(argv):
  del argv
  t0 = time.perf_counter()
  items, queries = planted_vectors(FLAGS.num_items, 2 * FLAGS.num_queries, FLAGS.dim,
                                   FLAGS.num_topics, FLAGS.item_noise, FLAGS.query_noise,
                                   FLAGS.seed)
  tune_q, report_q = queries[:FLAGS.num_queries], queries[FLAGS.num_queries:]
  print(f"generated {items.shape} in {time.perf_counter() - t0:.1f}s", flush=True)

  t0 = time.perf_counter()
  index = index_lib.build_searcher(items, recall_target=FLAGS.recall_target,
                                   sample_queries=tune_q, k=10)
  total_build = time.perf_counter() - t0
  print(f"built + tuned in {total_build:.1f}s: {index.params}", flush=True)

  report = {"num_items": FLAGS.num_items, "dim": FLAGS.dim, "cpus": os.cpu_count(),
            "build_seconds": round(index.build_seconds, 2),
            "build_and_tune_seconds": round(total_build, 2), "params": index.params}
  report.update(index_lib.measure(index, report_q))

  with tempfile.TemporaryDirectory() as tmp:
    index.item_ids = None
    meta = index_lib.save_index(index, tmp)
    size = sum(os.path.getsize(os.path.join(tmp, *rel.split("/")))
               for rel in meta["files"] if rel.startswith(index_lib.SEARCHER + "/"))
    float32_bytes = int(items.nbytes)
    del index
    rss0 = peak_memory.status_bytes("VmRSS")
    searcher = storage._load_searcher(  # pylint: disable=protected-access
        os.path.join(tmp, index_lib.SEARCHER), "")
    rss1 = peak_memory.status_bytes("VmRSS")
    del searcher
    loaded = index_lib.load_index(tmp)   # the round trip verifies and still answers
    again, _ = loaded.search(report_q[:100], 10)
  report.update(index_bytes=size, float32_bytes=float32_bytes,
                index_to_float32=round(size / float32_bytes, 3),
                searcher_rss_bytes=rss1 - rss0,
                searcher_rss_to_float32=round((rss1 - rss0) / float32_bytes, 3),
                reloaded_recall_vs_exact=round(index_lib.recall(
                    again, topk.top_k_items(report_q[:100], items, 10)[0]), 4))
  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
