"""A new user's MovieLens-100K protocol: each user's last 20% of events kept aside, the rest
given to the CLI as files, scored through the export's Recommender.

This is the protocol of issue 17 (the project's owners keep their own copy): it measures
what a user gets from the defaults, end to end (twotower-pipeline: train -> rank -> index ->
export), on events the run never saw. The given files are RecBole atomic files like the
built-in dataset's, with the held-out events removed; the user and item tables are given
whole. Recall@K and NDCG@K are twotower.metrics' (hits over min(K, |held-out|)), each user's
given items excluded from their recommendations, as a serving system would.

  python experiments/heldout_protocol.py --workdir=/tmp/heldout [-- --refit=none ...]

Flags after ``--`` go to twotower-pipeline unchanged.
"""
import json
import os
import subprocess
import sys
import time

import twotower  # noqa: F401

# isort: split
import numpy as np
from absl import app, flags

from twotower import metrics
from twotower.data import movielens, splits
from twotower.serving import Recommender

flags.DEFINE_string("workdir", None, "Where the given files, the run and the export go.")
flags.DEFINE_float("holdout_fraction", 0.2, "Share of each user's latest events kept aside.")
flags.DEFINE_list("ks", ["20"], "Cutoffs.")
flags.DEFINE_bool("retrieval_only", False, "Also score the export without the ranking head.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def write_given(directory: str, out: str, fraction: float) -> dict[str, set]:
  """Writes the given .inter (held-out events removed), .user and .item under ``out``;
  returns each user's held-out item ids."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(directory, "ml-100k.inter"), encoding="utf-8") as f:
    header, *lines = f.read().splitlines()
  rows = [line.split("\t") for line in lines]
  user = np.array([r[0] for r in rows])
  stamp = np.array([float(r[3]) for r in rows])
  order = np.lexsort((np.arange(len(rows)), stamp, user))
  codes = np.empty(len(rows), np.int8)
  codes[order] = splits.temporal_split(user[order], stamp[order], valid_fraction=0.0,
                                       test_fraction=fraction, min_user_interactions=3)
  held: dict[str, set] = {}
  with open(os.path.join(out, "given.inter"), "w", encoding="utf-8") as f:
    f.write(header + "\n")
    for line, row, code in zip(lines, rows, codes):
      if code == splits.TEST:
        held.setdefault(row[0], set()).add(row[1])
      else:
        f.write(line + "\n")
  for kind in ("user", "item"):
    with open(os.path.join(directory, f"ml-100k.{kind}"), encoding="utf-8") as src, \
        open(os.path.join(out, f"given.{kind}"), "w", encoding="utf-8") as dst:
      dst.write(src.read())
  return held


def given_items(path: str) -> dict[str, list]:
  seen: dict[str, list] = {}
  with open(path, encoding="utf-8") as f:
    next(f)
    for line in f:
      u, i = line.split("\t")[:2]
      seen.setdefault(u, []).append(i)
  return seen


def score(recommender: Recommender, held: dict[str, set], seen: dict[str, list],
          ks: list[int]) -> dict:
  users = sorted(held)
  depth = max(ks)
  recs = recommender.recommend_batch([{"user_id": u} for u in users], k=depth,
                                     exclude_items=[seen.get(u, []) for u in users])
  ids = {item: i for i, item in enumerate(recommender.item_ids)}
  ranked = np.full((len(users), depth), -1, np.int64)
  for row, rec in enumerate(recs):
    ranked[row, :len(rec)] = [ids[item] for item, _ in rec]
  pairs = sorted(row * len(ids) + ids[i] for row, u in enumerate(users) for i in held[u]
                 if i in ids)
  hits = metrics.hit_matrix(ranked, np.asarray(pairs, np.int64), len(ids))
  num_targets = np.array([len(held[u]) for u in users])
  out = {"users": len(users)}
  for k, recall, ndcg, _ in metrics.Cutoffs(ks, depth).per_row(hits, num_targets):
    out[f"recall@{k}"], out[f"ndcg@{k}"] = float(recall.mean()), float(ndcg.mean())
  return out


def main(argv):
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, "given")
  held = write_given(str(movielens.fetch_movielens_100k()), data_dir, FLAGS.holdout_fraction)
  started = time.time()
  command = [os.path.join(os.path.dirname(sys.executable), "twotower-pipeline"),
             f"--workdir={os.path.join(root, 'run')}", "--noprogress",
             f"--interactions={os.path.join(data_dir, 'given.inter')}",
             f"--user_features={os.path.join(data_dir, 'given.user')}",
             f"--item_features={os.path.join(data_dir, 'given.item')}", *argv[1:]]
  print(" ".join(command), flush=True)
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
  seconds = time.time() - started
  ks = [int(k) for k in FLAGS.ks]
  seen = given_items(os.path.join(data_dir, "given.inter"))
  export_dir = os.path.join(root, "run", "export")
  result = {"pipeline_seconds": round(seconds, 1), "flags": argv[1:],
            "two_stage": score(Recommender.load(export_dir), held, seen, ks)}
  if FLAGS.retrieval_only:
    result["retrieval_only"] = score(Recommender.load(export_dir, rerank=False), held, seen,
                                     ks)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
