"""The most-popular baseline at scale: ranking without scoring against scoring every item.

``evaluate.most_popular_metrics`` ranks every user's items as the one popularity order less
the user's exclusions, without scores. Until stop 17 it scored every user against every item
through the model's exact path with one-dimensional embeddings (the dense rank of each
item's count), which at 180k test users x 1M items cost as much as the model's own test.
This times both on the same sample of users (interleaved rounds, so machine noise hits both),
checks that their figures are identical, and times the unscored path on all users. It also
times the (user, item) key deduplication and lookup the evaluation's preprocessing does,
numpy's ``np.unique`` / ``np.isin`` against ``twotower.data.keys``' sort and binary search.

Counts are Zipf-distributed (many ties); each user has about ``num_exclude`` excluded
(training) items and ``num_targets`` targets, uniform over the corpus.

  python experiments/bench_most_popular.py --num_users=180000 --num_items=1000000 \
      --scored_users=4000
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import statistics
import time

import numpy as np
from absl import app, flags
from report import emit

from twotower import evaluate
from twotower.data import keys
from twotower.data.itemsets import ItemSets

flags.DEFINE_integer("num_users", 180_000, "Users evaluated by the unscored path.")
flags.DEFINE_integer("num_items", 1_000_000, "Corpus size.")
flags.DEFINE_integer("scored_users", 4_000, "Users of the side-by-side comparison.")
flags.DEFINE_integer("num_exclude", 40, "Mean excluded (training) items per user.")
flags.DEFINE_integer("num_targets", 5, "Mean target items per user.")
flags.DEFINE_integer("repeats", 3, "Interleaved timing rounds.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS


def _sets(rng: np.random.Generator, num_users: int, mean: int, num_items: int) -> ItemSets:
  lengths = rng.integers(1, 2 * mean, num_users)
  indptr = np.zeros(num_users + 1, np.int64)
  np.cumsum(lengths, out=indptr[1:])
  return ItemSets(indptr, rng.integers(0, num_items, indptr[-1]))


def _scored(counts: np.ndarray, targets: ItemSets, exclude: ItemSets, slices: dict) -> dict:
  """The path before stop 17: every item scored by its count's dense rank."""
  dense = np.unique(counts, return_inverse=True)[1].astype(np.float32).reshape(-1, 1)
  return evaluate.retrieval_metrics(np.ones((targets.num_rows, 1), np.float32), dense,
                                    targets, exclude, slices=slices)


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  n = FLAGS.num_items
  counts = rng.zipf(1.5, n)
  slices = evaluate.cold_slices(counts > 1)
  targets = _sets(rng, FLAGS.num_users, FLAGS.num_targets, n)
  exclude = _sets(rng, FLAGS.num_users, FLAGS.num_exclude, n)
  sample = np.arange(min(FLAGS.scored_users, FLAGS.num_users))
  few_targets, few_exclude = targets.subset(sample), exclude.subset(sample)

  scored, unscored = [], []
  for _ in range(FLAGS.repeats):
    scored.append(_seconds(lambda: _scored(counts, few_targets, few_exclude, slices)))
    unscored.append(_seconds(lambda: evaluate.most_popular_metrics(
        counts, few_targets, few_exclude, slices=slices)))
  identical = (_scored(counts, few_targets, few_exclude, slices)
               == evaluate.most_popular_metrics(counts, few_targets, few_exclude,
                                                slices=slices))
  all_users = [_seconds(lambda: evaluate.most_popular_metrics(counts, targets, exclude,
                                                             slices=slices))
               for _ in range(FLAGS.repeats)]

  rows = np.repeat(np.arange(exclude.num_rows, dtype=np.int64), exclude.lengths())
  pair_keys = keys.pair_keys(rows, exclude.indices, n)
  probe = keys.pair_keys(np.repeat(np.arange(targets.num_rows), targets.lengths()),
                         targets.indices, n)
  numpy_unique = _seconds(lambda: np.unique(pair_keys))
  sort_unique = _seconds(lambda: keys.unique(pair_keys))
  distinct = keys.unique(pair_keys)
  numpy_isin = _seconds(lambda: np.isin(probe, distinct))
  binary_search = _seconds(lambda: keys.contains(distinct, probe))

  scored_s, unscored_s = statistics.median(scored), statistics.median(unscored)
  emit({
      "num_items": n, "scored_users": len(sample), "num_users": FLAGS.num_users,
      "scored_seconds": round(scored_s, 3), "unscored_seconds": round(unscored_s, 3),
      "speedup": round(scored_s / unscored_s, 1),
      "scored_seconds_extrapolated_to_num_users": round(
          scored_s * FLAGS.num_users / len(sample), 1),
      "unscored_seconds_all_users": round(statistics.median(all_users), 3),
      "figures_identical": bool(identical),
      "keys": {"pairs": len(pair_keys), "np_unique_s": round(numpy_unique, 3),
               "sort_unique_s": round(sort_unique, 3), "np_isin_s": round(numpy_isin, 3),
               "binary_search_s": round(binary_search, 3)},
  }, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
