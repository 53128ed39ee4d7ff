"""Most-popular and matrix-factorization (implicit ALS) baselines on twotower's own split.

Same prepared data, same per-user temporal split, same exact evaluation (full corpus, the
user's earlier items excluded) as twotower-train, so the numbers compare directly with a
run's metrics.json. ALS hyper-parameters are picked on the validation split; for the test
split ALS is refit on train + validation events, its equivalent of twotower's query using
the history up to the test boundary.

  python experiments/baselines.py --dataset=movielens-100k
"""
import itertools
import json

import numpy as np
import scipy.sparse as sp
from absl import app, flags

import twotower  # noqa: F401
from twotower import evaluate
from twotower.config import DataConfig
from twotower.data import prepare as prepare_lib
from twotower.data import splits

flags.DEFINE_string("dataset", "movielens-100k", "Built-in dataset name.")
flags.DEFINE_string("interactions", None, "Or: an interaction file.")
flags.DEFINE_list("ks", ["10", "20", "50", "100"], "Cutoffs.")
flags.DEFINE_string("output", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _matrix(data, max_split):
  ev = data.events
  keep = ev.split <= max_split
  rows = ev.user[keep]
  cols = ev.item[keep] - data.item_vocab.offset
  return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                       shape=(len(data.user_vocab), data.num_items))


def _als_metrics(data, split_code, ks, factors, regularization, alpha, iterations=15):
  from implicit.als import AlternatingLeastSquares
  matrix = _matrix(data, split_code - 1)
  model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                  iterations=iterations, random_state=0,
                                  calculate_training_loss=False)
  model.fit(matrix, show_progress=False)
  queries = prepare_lib.eval_queries(data, split_code, 1)
  users = np.asarray(model.user_factors)[queries.user]
  return evaluate.retrieval_metrics(users.astype(np.float32),
                                    np.asarray(model.item_factors, np.float32),
                                    queries.targets, queries.exclude, ks=ks)


def main(argv):
  del argv
  ks = tuple(int(k) for k in FLAGS.ks)
  config = DataConfig(dataset=FLAGS.dataset, interactions=FLAGS.interactions)
  data = prepare_lib.prepare(prepare_lib.load_raw(config), config)
  results = {}
  for name, code in (("valid", splits.VALID), ("test", splits.TEST)):
    q = prepare_lib.eval_queries(data, code, 1)
    results[f"most_popular_{name}"] = evaluate.most_popular_metrics(
        data.train_item_counts(), q.targets, q.exclude, ks=ks)
  grid = list(itertools.product((32, 64, 128), (0.01, 0.1, 1.0), (1.0, 10.0, 40.0)))
  scored = []
  for factors, reg, alpha in grid:
    m = _als_metrics(data, splits.VALID, ks, factors, reg, alpha)
    scored.append((m["recall@20"], (factors, reg, alpha)))
  best = max(scored)[1]
  results["als_params"] = dict(zip(("factors", "regularization", "alpha"), best))
  results["als_valid"] = _als_metrics(data, splits.VALID, ks, *best)
  results["als_test"] = _als_metrics(data, splits.TEST, ks, *best)
  text = json.dumps(results, indent=2, sort_keys=True)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
