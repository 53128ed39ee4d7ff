"""Ranking metrics against brute-force references, ties included.

The reference enumerates every order of each group's items that is consistent with the
scores (all tie-breaks) and averages the textbook metric over them; AUC counts pairs.
"""
import itertools
import math

import numpy as np
import pytest

from twotower import ranking_metrics as rm


def _orders(scores):
  """Every ordering of indices by descending score, tied items in every order."""
  n = len(scores)
  for perm in itertools.permutations(range(n)):
    if all(scores[perm[i]] >= scores[perm[i + 1]] for i in range(n - 1)):
      yield perm


def _brute_group(labels, scores, k):
  mrrs, ndcgs = [], []
  ideal = sorted(labels, reverse=True)
  idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal[:k]))
  pos = [i for i, y in enumerate(labels) if y > 0]
  for order in _orders(scores):
    rank = {item: r + 1 for r, item in enumerate(order)}
    mrrs.append(np.mean([1.0 / rank[i] for i in pos]) if pos else np.nan)
    dcg = sum(labels[item] / math.log2(r + 2) for r, item in enumerate(order[:k]))
    ndcgs.append(dcg / idcg if idcg > 0 else np.nan)
  return np.mean(mrrs), np.mean(ndcgs)


def _brute_auc(labels, scores):
  pos = [s for y, s in zip(labels, scores) if y > 0]
  neg = [s for y, s in zip(labels, scores) if y <= 0]
  if not pos or not neg:
    return np.nan
  wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
  return wins / (len(pos) * len(neg))


def _random_impressions(seed, num_groups=12, max_size=6, levels=3):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, max_size + 1, num_groups)
  groups = np.repeat(rng.permutation(1000)[:num_groups] * 7, sizes)  # arbitrary group keys
  labels = (rng.random(len(groups)) < 0.35).astype(np.int64)
  scores = rng.integers(0, levels, len(groups)).astype(np.float32)  # many ties
  perm = rng.permutation(len(groups))                              # groups interleaved
  return labels[perm], scores[perm], groups[perm]


def _reference(labels, scores, groups, ks):
  per = {"mrr": [], "auc": [], "sizes": []}
  per.update({f"ndcg@{k}": [] for k in ks})
  for key in np.unique(groups):
    m = groups == key
    y, s = list(labels[m]), list(scores[m])
    for k in ks:
      per[f"ndcg@{k}"].append(_brute_group(y, s, k)[1])
    per["mrr"].append(_brute_group(y, s, 1)[0])
    per["auc"].append(_brute_auc(y, s))
    per["sizes"].append(m.sum())
  aucs, sizes = np.array(per["auc"]), np.array(per["sizes"])
  ok = ~np.isnan(aucs)
  out = {"auc": _brute_auc(list(labels), list(scores)),
         "gauc": np.sum(aucs[ok] * sizes[ok]) / np.sum(sizes[ok]),
         "gauc_unweighted": np.mean(aucs[ok]),
         "mrr": np.nanmean(per["mrr"])}
  out.update({f"ndcg@{k}": np.nanmean(per[f"ndcg@{k}"]) for k in ks})
  return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [2, 3, 1000])
def test_metrics_match_brute_force(seed, levels):
  labels, scores, groups = _random_impressions(seed, levels=levels)
  ks = (1, 2, 3, 5, 10)
  want = _reference(labels, scores, groups, ks)
  got = rm.ranking_metrics(labels, scores, groups, ks=ks)
  for name in ("auc", "gauc", "mrr") + tuple(f"ndcg@{k}" for k in ks):
    assert got[name] == pytest.approx(want[name], abs=1e-12), name
  assert rm.auc(labels, scores) == pytest.approx(want["auc"], abs=1e-12)
  assert rm.group_auc(labels, scores, groups) == pytest.approx(want["gauc"], abs=1e-12)
  assert rm.group_auc(labels, scores, groups, weighted=False) == pytest.approx(
      want["gauc_unweighted"], abs=1e-12)
  assert rm.mrr(labels, scores, groups) == pytest.approx(want["mrr"], abs=1e-12)
  assert rm.ndcg(labels, scores, groups, 5) == pytest.approx(want["ndcg@5"], abs=1e-12)


def test_graded_gains_match_brute_force():
  rng = np.random.default_rng(3)
  groups = np.repeat(np.arange(5), 5)
  labels = rng.integers(0, 4, len(groups)).astype(float)
  scores = rng.integers(0, 3, len(groups)).astype(float)
  for k in (1, 3, 5):
    want = np.nanmean([_brute_group(list(labels[groups == g]), list(scores[groups == g]), k)[1]
                       for g in range(5)])
    assert rm.ndcg(labels, scores, groups, k) == pytest.approx(want, abs=1e-12)


def test_known_values_and_edge_cases():
  # One group: positive at rank 2 of 3.
  y, s, g = np.array([0, 1, 0]), np.array([3.0, 2.0, 1.0]), np.zeros(3)
  assert rm.mrr(y, s, g) == pytest.approx(0.5)
  assert rm.ndcg(y, s, g, 5) == pytest.approx(1 / math.log2(3))
  assert rm.ndcg(y, s, g, 1) == 0.0
  assert rm.auc(y, s) == pytest.approx(0.5)
  # All scores tied: AUC is exactly 1/2, MRR the mean of 1/r.
  assert rm.auc(y, np.zeros(3)) == 0.5
  assert rm.mrr(y, np.zeros(3), g) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
  # Groups without positives are skipped by MRR/NDCG; one-class groups by gAUC.
  y2 = np.array([1, 0, 0, 0])
  s2 = np.array([1.0, 0.0, 5.0, 4.0])
  g2 = np.array([0, 0, 1, 1])
  assert rm.mrr(y2, s2, g2) == 1.0 and rm.ndcg(y2, s2, g2, 10) == 1.0
  assert rm.group_auc(y2, s2, g2) == 1.0
  assert math.isnan(rm.auc(np.zeros(3), np.arange(3.0)))
  assert math.isnan(rm.group_auc(np.ones(3), np.arange(3.0), np.zeros(3)))
  assert rm.ranking_metrics([], [], [])["num_impressions"] == 0
  with pytest.raises(ValueError, match="length"):
    rm.ranking_metrics([1, 0], [1.0], [0, 0])
