"""The cold and warm slices of evaluation: the held-out targets whose item had no training
event in what the evaluated model trained on, and the others, read off the same top-k pass
(twotower.evaluate ``slices``), with the exact random-ranking floor; then end to end through
twotower.train (selection and train_valid refit) and twotower-evaluate."""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from twotower import evaluate
from twotower.data.itemsets import ItemSets

L3 = 1 / math.log2(3)   # the discount of rank 2


def _ranked(num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """Item i scores num_items - i for every user: the ranking is 0, 1, 2, ..."""
  items = np.arange(num_items, 0, -1, dtype=np.float32).reshape(-1, 1)
  return items, np.ones((1, 1), np.float32)


def _queries(n: int) -> np.ndarray:
  return np.ones((n, 1), np.float32)


# -- the metric core on hand-made rankings ---------------------------------------------------


def test_slices_of_a_hand_made_ranking():
  items, _ = _ranked(8)               # ranking 0, 1, ..., 7 before exclusions
  cold = np.zeros(8, bool)
  cold[[2, 5, 6]] = True
  targets = ItemSets.from_lists([[2, 3, 6],   # A: cold 2 (rank 2), 6 (rank 6); warm 3 (rank 3)
                                 [0, 5],      # B: warm 0 (rank 1); cold 5 (rank 6)
                                 [1],         # C: warm 1 (rank 2: cold 2 is excluded)
                                 [6, 4],      # D: cold 6 excluded, so dropped; warm 4 (rank 5)
                                 [7]])        # E: warm 7 (rank 8)
  exclude = ItemSets.from_lists([[0], [], [2], [6], []])
  got = evaluate.retrieval_metrics(_queries(5), items, targets, exclude, ks=(3, 5),
                                   slices=evaluate.cold_slices(~cold))
  a_ndcg = L3 / (1 + L3)   # A's cold hit at rank 2 over the ideal of 2 hits
  dcg3 = 1 + L3 + 0.5      # the discounts of ranks 1..3
  dcg5 = dcg3 + 1 / math.log2(5) + 1 / math.log2(6)
  expected_cold = {
      "num_items": 3, "num_targets": 3, "num_users": 2,   # A (2 targets) and B (1)
      "recall@3": (1 / 2 + 0) / 2, "ndcg@3": (a_ndcg + 0) / 2, "hit_rate@3": 0.5,
      "recall@5": (1 / 2 + 0) / 2, "ndcg@5": (a_ndcg + 0) / 2, "hit_rate@5": 0.5,
      # A ranks 7 candidates (2 targets), B 8 (1 target): K * t / n / min(K, t)
      "random_recall@3": (3 * 2 / 7 / 2 + 3 / 8) / 2,
      "random_ndcg@3": (2 / 7 * dcg3 / (1 + L3) + 1 / 8 * dcg3) / 2,
      "random_recall@5": (5 * 2 / 7 / 2 + 5 / 8) / 2,
      "random_ndcg@5": (2 / 7 * dcg5 / (1 + L3) + 1 / 8 * dcg5) / 2,
  }
  assert got["cold"].keys() == expected_cold.keys()
  for key, value in expected_cold.items():
    assert got["cold"][key] == pytest.approx(value, abs=1e-12), key
  warm = got["warm"]   # A 3 @3, B 0 @1, C 1 @2, D 4 @5, E 7 @8: one target each
  assert (warm["num_items"], warm["num_targets"], warm["num_users"]) == (5, 5, 5)
  assert warm["recall@3"] == pytest.approx(3 / 5)
  assert warm["recall@5"] == pytest.approx(4 / 5)
  assert warm["ndcg@3"] == pytest.approx((0.5 + 1 + L3) / 5)
  assert warm["ndcg@5"] == pytest.approx((0.5 + 1 + L3 + 1 / math.log2(6)) / 5)
  # The whole-set figures are the ones computed without slices.
  plain = evaluate.retrieval_metrics(_queries(5), items, targets, exclude, ks=(3, 5))
  assert {k: v for k, v in got.items() if k not in ("cold", "warm")} == plain


def test_a_slice_of_every_item_is_the_whole_set_whatever_the_chunks():
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(40, 4)).astype(np.float32)
  items = rng.normal(size=(30, 4)).astype(np.float32)
  targets = ItemSets.from_lists([rng.choice(30, rng.integers(1, 6), replace=False)
                                 for _ in range(40)])
  exclude = ItemSets.from_lists([rng.choice(30, 4, replace=False) for _ in range(40)])
  half = np.arange(30) % 2 == 0
  slices = {"all": np.ones(30, bool), "even": half, "odd": ~half}
  whole = evaluate.retrieval_metrics(queries, items, targets, exclude, ks=(1, 5, 50),
                                     slices=slices)
  chunked = evaluate.retrieval_metrics(queries, items, targets, exclude, ks=(1, 5, 50),
                                       max_chunk_elements=7 * 30, slices=slices)
  assert chunked == whole   # per-user values, summed once: bit-identical
  for key in ("recall@1", "ndcg@5", "hit_rate@5", "recall@50", "num_users"):
    assert whole["all"][key] == pytest.approx(whole[key], abs=1e-12), key
  assert (whole["even"]["num_targets"] + whole["odd"]["num_targets"]
          == whole["all"]["num_targets"])
  assert whole["even"]["num_users"] < whole["num_users"]


def test_random_floor_is_the_mean_over_every_ranking():
  """Exact, not sampled: the mean of the cold figures over all 5! orders of a 5-item corpus."""
  cold = np.array([False, True, False, True, False])
  targets = ItemSets.from_lists([[1, 3, 4], [3, 2]])
  exclude = ItemSets.from_lists([[0], []])
  ks = (1, 2, 3, 10)
  sums: dict = {}
  for order in itertools.permutations(range(5)):
    items = np.array(order, np.float32).reshape(-1, 1)
    got = evaluate.retrieval_metrics(_queries(2), items, targets, exclude, ks=ks,
                                     slices=evaluate.cold_slices(~cold))["cold"]
    for k in ks:
      for name in (f"recall@{k}", f"ndcg@{k}"):
        sums[name] = sums.get(name, 0.0) + got[name] / 120
  for k in ks:
    assert got[f"random_recall@{k}"] == pytest.approx(sums[f"recall@{k}"], abs=1e-12), k
    assert got[f"random_ndcg@{k}"] == pytest.approx(sums[f"ndcg@{k}"], abs=1e-12), k


def test_no_cold_targets_gives_counts_and_no_figures():
  items, _ = _ranked(6)
  targets = ItemSets.from_lists([[0, 1], [2]])
  trained = np.array([True, True, True, True, False, False])   # cold 4, 5: nobody's target
  for slices in (evaluate.cold_slices(trained), evaluate.cold_slices(np.ones(6, bool))):
    got = evaluate.retrieval_metrics(_queries(2), items, targets, ItemSets.from_lists([[], [0]]),
                                     ks=(2,), slices=slices)
    assert got["cold"] == {"num_items": int((~slices["warm"]).sum()), "num_targets": 0,
                           "num_users": 0}
    assert got["warm"]["recall@2"] == 1.0
    json.dumps(got, allow_nan=False)   # no NaN anywhere
  # Nobody evaluated at all: still counts, not NaN.
  none = evaluate.retrieval_metrics(_queries(1), items, ItemSets.from_lists([[4]]),
                                    ItemSets.from_lists([[4]]), ks=(2,),
                                    slices=evaluate.cold_slices(trained))
  assert none["cold"] == {"num_items": 2, "num_targets": 0, "num_users": 0}
  json.dumps(none, allow_nan=False)


def test_most_popular_gets_nothing_on_the_cold_slice():
  counts = np.array([5, 0, 3, 0, 9, 1, 2, 4])   # items 1 and 3 never trained: ranked last
  targets = ItemSets.from_lists([[1, 4], [3], [0, 3]])
  exclude = ItemSets.from_lists([[0], [2], []])
  got = evaluate.most_popular_metrics(counts, targets, exclude, ks=(3, 5),
                                      slices=evaluate.cold_slices(counts > 0))
  assert (got["cold"]["num_targets"], got["cold"]["num_users"]) == (3, 3)
  assert got["cold"]["recall@5"] == got["cold"]["ndcg@5"] == 0.0
  assert got["cold"]["random_recall@5"] > 0
  assert got["warm"]["recall@3"] == pytest.approx((1 + 1) / 2)   # 4 first; 0 second


def test_a_mask_that_is_not_over_the_corpus_is_refused():
  items, _ = _ranked(4)
  targets = ItemSets.from_lists([[0]])
  with pytest.raises(ValueError, match="slice 'cold'"):
    evaluate.retrieval_metrics(_queries(1), items, targets, slices={"cold": np.ones(3, bool)})
  with pytest.raises(ValueError, match="bool mask"):
    evaluate.retrieval_metrics(_queries(1), items, targets, slices={"cold": np.ones(4)})


# -- end to end -------------------------------------------------------------------------------

NUM_USERS, WARM = 60, 40   # each user: 8 train events, 1 valid, 1 test


def _write_log(path: str) -> None:
  """User u trains on warm items (8u + j) % 40 (every warm item trains). Validation: users
  0-19 meet v{u % 5}, items no one trains on; test: users 0-9 meet t{u % 5}, met only there,
  and users 10-19 meet v{(u + 1) % 5}, cold for the selection model but in the train_valid
  refit's training data. Everyone else validates and tests on warm items of their own."""
  rows = []
  for u in range(NUM_USERS):
    events = [f"w{(8 * u + j) % WARM}" for j in range(8)]
    events.append(f"v{u % 5}" if u < 20 else f"w{(8 * u + 8) % WARM}")
    events.append(f"t{u % 5}" if u < 10 else f"v{(u + 1) % 5}" if u < 20
                  else f"w{(8 * u + 9) % WARM}")
    rows += [(f"u{u}", item, t + 1) for t, item in enumerate(events)]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["user_id", "item_id", "timestamp"])
    writer.writerows(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  import twotower
  root = tmp_path_factory.mktemp("cold")
  log = str(root / "log.csv")
  _write_log(log)
  config = tiny_config()
  config.data.interactions = log
  config.train.refit = "train_valid"
  workdir = str(root / "run")
  twotower.train(config, workdir)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    return workdir, json.load(f)


def test_final_figures_carry_the_cold_slice_of_what_each_model_trained_on(trained):
  _, metrics = trained
  final = metrics["final"]
  # The selection model trained on the train split: v* and t* (10 items) are cold.
  test, valid = final["test"], final["valid"]
  assert (test["cold"]["num_items"], test["cold"]["num_targets"],
          test["cold"]["num_users"]) == (10, 20, 20)
  assert (valid["cold"]["num_targets"], valid["cold"]["num_users"]) == (20, 20)
  assert test["warm"]["num_targets"] == valid["warm"]["num_targets"] == NUM_USERS - 20
  # Each cold user ranks 50 items less 8 train (valid) or 8 train + 1 valid (test) items.
  assert test["cold"]["random_recall@10"] == pytest.approx(10 / 41)
  assert valid["cold"]["random_recall@10"] == pytest.approx(10 / 42)
  assert final["most_popular_test"]["cold"]["recall@10"] == 0.0
  assert final["most_popular_test"]["cold"]["num_targets"] == 20
  # The refit trained on train+valid: only the five t* items are cold, users 0-9's targets.
  refit = final["refit"]["test"]
  assert (refit["cold"]["num_items"], refit["cold"]["num_targets"],
          refit["cold"]["num_users"]) == (5, 10, 10)
  assert refit["warm"]["num_targets"] == NUM_USERS - 10
  # Every validation during training carries the slices too.
  assert all(r["valid"]["cold"]["num_targets"] == 20 for r in metrics["epochs"])


def test_tensorboard_has_the_slices(trained):
  import tensorflow as tf
  workdir, _ = trained
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(workdir, "tensorboard", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {"valid/recall@10", "valid/cold/recall@10", "valid/warm/num_targets"} <= tags


def test_twotower_evaluate_reports_the_slices(trained):
  workdir, _ = trained
  proc = subprocess.run([sys.executable, "-m", "twotower.cli.evaluate", f"--workdir={workdir}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  # The selection model (the shipped refit trained on valid): v* and t* are cold.
  assert (result["test"]["cold"]["num_targets"], result["valid"]["cold"]["num_targets"]) == (20, 20)
  assert "selection model" in result["model"]
  cold = result["test"]["cold"]
  line = (f"test slices: cold: 20 targets of 20 users, 10 items: recall@10 "
          f"{cold['recall@10']:.4f} (random {10 / 41:.4f}, ")
  assert line in proc.stderr, proc.stderr[-3000:]
  assert "valid slices: cold: 20 targets of 20 users, 10 items" in proc.stderr
