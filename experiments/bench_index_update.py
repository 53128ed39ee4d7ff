"""Index update vs rebuild at scale (twotower.index.update, the engine of
``twotower-index --update_from``).

A ScaNN index is built and tuned over planted vectors (as experiments/bench_index.py: topic
centroids, items around them, two-topic queries) and saved. Then, for each changed fraction f,
a new corpus: f/3 of the items deleted, f/3 new ones added, f/3 moved (redrawn around another
topic), and every other item drifted by ``--drift`` in cosine distance (a retrain moves every
vector a little). Side by side on that corpus: the saved index loaded and updated (load,
diff, upsert/delete; its tuned knobs kept) and a full rebuild (build + tune, same target).
Recall@10 of both is against exact search over the new corpus's true vectors, on held-out
queries. Times are wall seconds and this process's CPU seconds (all threads), the latter
less disturbed by other load on a shared machine. A second sweep keeps the changed fraction at 1% and varies the drift, the update
keeping drifted vectors stale (``--update_tolerance`` above the drift), to show what
staleness costs in recall.

  nice -n 10 python experiments/bench_index_update.py --num_items=1000000 --dim=64
"""
import os
import tempfile
import time

import numpy as np
import planted
from absl import app, flags
from report import emit

import twotower  # noqa: F401
from twotower import index as index_lib
from twotower import topk
from twotower.index import update as update_lib

flags.DEFINE_integer("num_items", 1_000_000, "Corpus size.")
flags.DEFINE_integer("dim", 64, "Embedding dimension.")
flags.DEFINE_integer("num_topics", 1000, "Planted topic centroids.")
flags.DEFINE_float("noise", 1.25, "Noise norm of items and queries relative to a centroid.")
flags.DEFINE_integer("num_queries", 1000, "Tuning queries (as many again are reported on).")
flags.DEFINE_float("recall_target", 0.95, "Recall@10 target for tuning.")
flags.DEFINE_list("fractions", ["0.001", "0.01", "0.05", "0.2"], "Changed fractions.")
flags.DEFINE_float("drift", 0.002, "Cosine distance every unchanged item drifts by.")
flags.DEFINE_list("drifts", ["0.005", "0.01", "0.02", "0.05"],
                  "Drifts of the staleness sweep (at 1% changed; empty: skip it).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS


def new_corpus(rng, topics, old, fraction, drift):
  """(ids, vectors) of the next day's corpus: deletes, adds, moves and drift of ``old``."""
  n = len(old)
  change = rng.permutation(n)[:int(round(fraction * n))]
  deleted, moved = change[:len(change) // 3], change[len(change) // 3:2 * len(change) // 3]
  num_added = len(change) - len(deleted) - len(moved)
  vectors = old.copy()
  if drift > 0:   # a random direction of norm eps: cosine distance ~ eps^2 / 2
    g = rng.standard_normal(old.shape, np.float32)
    g -= np.einsum("ij,ij->i", g, old)[:, None] * old
    g *= np.sqrt(2 * drift) / np.linalg.norm(g, axis=1, keepdims=True)
    vectors = planted.normalize(old + g).astype(np.float32)
  vectors[moved], _ = planted.planted_items(rng, topics, len(moved), FLAGS.noise)
  added, _ = planted.planted_items(rng, topics, num_added, FLAGS.noise)
  keep = np.ones(n, bool)
  keep[deleted] = False
  ids = np.concatenate([np.char.add("i", np.arange(n).astype(str))[keep],
                        np.char.add("new", np.arange(num_added).astype(str))]).astype(object)
  return ids, np.concatenate([vectors[keep], added])


def recall_vs_true(index, ids, vectors, queries):
  """Recall@10 of ``index`` against exact search over the true ``vectors`` (``ids`` order)."""
  truth = update_lib.aligned(index, ids, vectors)
  exact, _ = topk.top_k_items(queries, truth, 10)
  return round(index_lib.recall(index.search(queries, 10)[0], exact), 4)


def updated(old_dir, ids, vectors, tolerance):
  """(index, diff, seconds, parts): the saved index loaded (every file's sha256 and the
  fingerprint checked), diffed against the corpus and updated to it."""
  t0, c0 = time.perf_counter(), time.process_time()
  old = index_lib.load_index(old_dir)
  t1 = time.perf_counter()
  d = update_lib.diff(old.item_ids, old.embeddings, ids, vectors, tolerance)
  t2 = time.perf_counter()
  index = update_lib.apply(old, ids, vectors, d)
  t3 = time.perf_counter()
  return index, d, t3 - t0, {"update_cpu_seconds": round(time.process_time() - c0, 2),
                             "load_s": round(t1 - t0, 2), "diff_s": round(t2 - t1, 2),
                             "apply_s": round(t3 - t2, 2)}


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  topics = planted.topic_centroids(rng, FLAGS.num_topics, FLAGS.dim)
  items, _ = planted.planted_items(rng, topics, FLAGS.num_items, FLAGS.noise)
  queries, _, _ = planted.planted_queries(rng, topics, 2 * FLAGS.num_queries, FLAGS.noise)
  tune_q, report_q = queries[:FLAGS.num_queries], queries[FLAGS.num_queries:]
  t0 = time.perf_counter()
  base = index_lib.build_searcher(items, recall_target=FLAGS.recall_target,
                                  sample_queries=tune_q, k=10)
  base.item_ids = np.char.add("i", np.arange(len(items)).astype(str)).astype(object)
  print(f"base index built + tuned in {time.perf_counter() - t0:.1f}s: {base.params}",
        flush=True)
  report = {"num_items": FLAGS.num_items, "dim": FLAGS.dim, "cpus": len(os.sched_getaffinity(0)),
            "drift": FLAGS.drift, "base_params": base.params, "fractions": [], "drifts": []}
  tolerance = max(2 * FLAGS.drift, 1e-6)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    index_lib.save_index(base, tmp)
    del base
    for fraction in map(float, FLAGS.fractions):
      ids, vectors = new_corpus(rng, topics, items, fraction, FLAGS.drift)
      index, d, update_s, parts = updated(tmp, ids, vectors, tolerance)
      update_recall = recall_vs_true(index, ids, vectors, report_q)
      del index
      t0, c0 = time.perf_counter(), time.process_time()
      rebuilt = index_lib.build_searcher(vectors, recall_target=FLAGS.recall_target,
                                         sample_queries=tune_q, k=10)
      rebuild_s, rebuild_cpu = time.perf_counter() - t0, time.process_time() - c0
      rebuilt.item_ids = ids
      rebuild_recall = recall_vs_true(rebuilt, ids, vectors, report_q)
      del rebuilt
      row = {"changed_fraction": fraction, **d.counts(), "update_seconds": round(update_s, 2), **parts,
             "rebuild_seconds": round(rebuild_s, 2),
             "rebuild_cpu_seconds": round(rebuild_cpu, 2),
             "speedup": round(rebuild_s / update_s, 1),
             "cpu_speedup": round(rebuild_cpu / parts["update_cpu_seconds"], 1),
             "update_recall@10": update_recall,
             "rebuild_recall@10": rebuild_recall,
             "recall_gap": round(rebuild_recall - update_recall, 4)}
      print(row, flush=True)
      rows.append(row)
    report["fractions"] = rows
    for drift in map(float, [x for x in FLAGS.drifts if x]):
      ids, vectors = new_corpus(rng, topics, items, 0.01, drift)
      index, d, update_s, parts = updated(tmp, ids, vectors, 2 * drift)
      row = {"drift": drift, "changed_fraction": 0.01, **d.counts(),
             "stale_max_cosine_distance": round(d.kept_max_distance, 4),
             "update_seconds": round(update_s, 2), **parts,
             "update_recall@10": recall_vs_true(index, ids, vectors, report_q)}
      del index
      print(row, flush=True)
      report["drifts"].append(row)
  print("\n| changed | added | deleted | moved | update s (CPU s) | rebuild s (CPU s) | "
        "speedup wall / CPU | recall@10 update | recall@10 rebuild |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['changed_fraction']:.1%} | {r['added']:,} | {r['deleted']:,} | {r['moved']:,} "
          f"| {r['update_seconds']:.1f} ({r['update_cpu_seconds']:.1f}) "
          f"| {r['rebuild_seconds']:.1f} ({r['rebuild_cpu_seconds']:.1f}) "
          f"| {r['speedup']:.1f}x / {r['cpu_speedup']:.1f}x "
          f"| {r['update_recall@10']:.4f} | {r['rebuild_recall@10']:.4f} |")
  if report["drifts"]:
    print("\n| drift (kept stale) | recall@10 update (1% changed) |\n|---|---|")
    for r in report["drifts"]:
      print(f"| {r['drift']} | {r['update_recall@10']:.4f} |")
  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
