"""Ranking metrics over scored impressions, grouped per user: AUC, gAUC, MRR, NDCG@k.

Impressions are flat arrays ``(labels, scores, groups)``; a group is one user's impression
list, of any length. Everything is one sort plus segment sums (``np.bincount``), so a million
impressions cost a few vectorised passes, never a Python loop over users.

Ties are scored by their expectation under a uniformly random order of the tied items, so no
arbitrary tie-break (input order, item id) can flatter or penalise a model that outputs equal
scores: a tied positive/negative pair counts 1/2 in AUC (Mann-Whitney), and a run of tied
items occupying ranks a..b gets the mean of 1/r (MRR) or of the rank discount (NDCG) over
a..b (McSherry & Najork, 2008). The per-group definitions follow the MIND benchmark's
evaluation (the NRMS line of work): MRR averages 1/rank over a group's positives; NDCG@k
uses gains equal to the labels and the discounts 1/log2(rank + 1) of ``twotower.metrics``,
whose binary ranked-list NDCG it equals when labels are 0/1 and scores untied.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from twotower import metrics


def _sorted_layout(labels, scores, groups):
  """Rows sorted by (group, score descending) with each row's group and tie span."""
  labels = np.asarray(labels, np.float64).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  groups = np.asarray(groups).reshape(-1)
  if not len(labels) == len(scores) == len(groups):
    raise ValueError(f"labels, scores and groups differ in length: {len(labels)}, "
                     f"{len(scores)}, {len(groups)}")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN")
  _, group_index = np.unique(groups, return_inverse=True)
  order = np.lexsort((-scores, group_index))
  g, s, y = group_index[order], scores[order], labels[order]
  n = len(g)
  idx = np.arange(n)
  new_group = np.r_[True, g[1:] != g[:-1]] if n else np.zeros(0, bool)
  new_tie = new_group | (np.r_[True, s[1:] != s[:-1]] if n else np.zeros(0, bool))
  group_start = np.maximum.accumulate(np.where(new_group, idx, 0)) if n else idx
  tie_start = np.maximum.accumulate(np.where(new_tie, idx, 0)) if n else idx
  # The last row of each tie run: the next run's start minus one, scanned from the right.
  next_start = np.where(np.r_[new_tie[1:], True], idx + 1, n) if n else idx
  tie_end = np.minimum.accumulate(next_start[::-1])[::-1] - 1 if n else idx
  num_groups = int(g.max()) + 1 if n else 0
  sizes = np.bincount(g, minlength=num_groups)
  # 1-based ranks spanned by each row's tie run within its group.
  first, last = tie_start - group_start + 1, tie_end - group_start + 1
  return y, g, first, last, sizes


def _span_mean(prefix: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
  """Mean of f(r) over ranks first..last, from prefix[r] = sum_{i<=r} f(i)."""
  return (prefix[last] - prefix[first - 1]) / (last - first + 1)


def _prefix(values: np.ndarray) -> np.ndarray:
  return np.concatenate([[0.0], np.cumsum(values)])


def _group_auc_parts(y, g, first, last, sizes):
  """Per-group AUC (NaN where a group lacks positives or negatives)."""
  pos = y > 0
  num_groups = len(sizes)
  num_pos = np.bincount(g, weights=pos, minlength=num_groups)
  num_neg = sizes - num_pos
  # Ascending mid-rank of each row: the mean ascending rank over its tie run.
  mid_rank = sizes[g] + 1 - (first + last) / 2.0
  rank_sum = np.bincount(g, weights=np.where(pos, mid_rank, 0.0), minlength=num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)
  auc[(num_pos == 0) | (num_neg == 0)] = np.nan
  return auc


def auc(labels, scores) -> float:
  """ROC AUC over all impressions (labels > 0 are positives); ties count 1/2. NaN when one
  class is absent."""
  labels = np.asarray(labels).reshape(-1)
  y, g, first, last, sizes = _sorted_layout(labels, scores, np.zeros(len(labels), np.int64))
  if len(y) == 0:
    return float("nan")
  return float(_group_auc_parts(y, g, first, last, sizes)[0])


def group_auc(labels, scores, groups, weighted: bool = True) -> float:
  """Mean per-group AUC over the groups that hold both classes.

  weighted: weight each group by its number of impressions (Zhou et al. 2018, DIN), so a
  user with ten held-out interactions counts ten times one with a single interaction;
  otherwise every such group counts once (MIND).
  """
  y, g, first, last, sizes = _sorted_layout(labels, scores, groups)
  per_group = _group_auc_parts(y, g, first, last, sizes)
  ok = ~np.isnan(per_group)
  if not ok.any():
    return float("nan")
  weights = sizes[ok] if weighted else np.ones(ok.sum())
  return float(np.sum(per_group[ok] * weights) / np.sum(weights))


def _group_mrr(y, g, first, last, sizes):
  max_size = int(sizes.max()) if len(sizes) else 0
  inverse_rank = _prefix(1.0 / np.arange(1, max_size + 1))
  pos = y > 0
  num_pos = np.bincount(g, weights=pos, minlength=len(sizes))
  total = np.bincount(g, weights=np.where(pos, _span_mean(inverse_rank, first, last), 0.0),
                      minlength=len(sizes))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_pos > 0, total / num_pos, np.nan)


def _group_ndcg(y, g, first, last, sizes, k: int):
  if k <= 0:
    raise ValueError(f"k must be positive, got {k}")
  max_size = int(sizes.max()) if len(sizes) else 0
  # The ranked-list discount (twotower.metrics), 0 past the cutoff.
  discount = np.where(np.arange(1, max_size + 1) <= k, metrics.discounts(max_size), 0.0)
  prefix = _prefix(discount)
  num_groups = len(sizes)
  dcg = np.bincount(g, weights=y * _span_mean(prefix, first, last), minlength=num_groups)
  # Ideal DCG: the same rows sorted by label, no ties to average (equal labels, equal gain).
  order = np.lexsort((-y, g))
  ideal_y, ideal_g = y[order], g[order]
  starts = np.r_[0, np.cumsum(sizes)[:-1]] if num_groups else np.zeros(0, np.int64)
  ideal_rank = np.arange(len(y)) - starts[ideal_g]
  idcg = np.bincount(ideal_g, weights=ideal_y * discount[ideal_rank], minlength=num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(idcg > 0, dcg / idcg, np.nan)


def mrr(labels, scores, groups) -> float:
  """Mean over groups with a positive of the mean 1/rank of the group's positives."""
  per_group = _group_mrr(*_sorted_layout(labels, scores, groups))
  return float(np.nanmean(per_group)) if np.isfinite(per_group).any() else float("nan")


def ndcg(labels, scores, groups, k: int) -> float:
  """Mean NDCG@k over groups with a positive (gain = label, discount 1/log2(rank+1))."""
  y, g, first, last, sizes = _sorted_layout(labels, scores, groups)
  per_group = _group_ndcg(y, g, first, last, sizes, k)
  return float(np.nanmean(per_group)) if np.isfinite(per_group).any() else float("nan")


def ranking_metrics(labels, scores, groups, ks: Sequence[int] = (5, 10)) -> dict:
  """AUC, gAUC, MRR and NDCG@k of scored impressions, with one sort for all of them."""
  labels = np.asarray(labels).reshape(-1)
  layout = _sorted_layout(labels, scores, groups)
  y, g, first, last, sizes = layout
  if len(y) == 0:
    return {"num_groups": 0, "num_impressions": 0}
  per_group_auc = _group_auc_parts(*layout)
  ok = ~np.isnan(per_group_auc)
  out = {
      "auc": auc(labels, scores),
      "gauc": (float(np.sum(per_group_auc[ok] * sizes[ok]) / np.sum(sizes[ok]))
               if ok.any() else float("nan")),
      "mrr": float(np.nanmean(_group_mrr(*layout))) if (y > 0).any() else float("nan"),
      "num_groups": int(len(sizes)),
      "num_impressions": int(len(y)),
      "num_positives": int((y > 0).sum()),
  }
  for k in ks:
    per_group = _group_ndcg(y, g, first, last, sizes, k)
    out[f"ndcg@{k}"] = (float(np.nanmean(per_group)) if np.isfinite(per_group).any()
                        else float("nan"))
  return out
