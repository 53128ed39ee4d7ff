"""The one Recall@K, NDCG@K, HitRate@K and reciprocal rank of ranked lists against targets.

Binary gains: a ranked item is a hit when it is one of the row's targets. Recall@K divides
the hits in the top K by min(K, |targets|); NDCG@K is the DCG of the top K (discount
1 / log2(rank + 1)) over the ideal DCG of min(K, |targets|) hits; HitRate@K is whether any
target is in the top K; the reciprocal rank is 1 / the rank of the first hit. Recall@K and
NDCG@K of a uniformly random ranking are also given exactly (``Cutoffs.random_per_row``): the
floor a slice's figures are read against.

Retrieval evaluation (twotower.evaluate, a chunk of users at a time) and the ranking head's
two-stage figures score their ranked lists here; the impression metrics of
``twotower.ranking_metrics`` (graded labels, ties averaged) use the same ``discounts``.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def discounts(n: int) -> np.ndarray:
  """The DCG discount 1 / log2(rank + 1) of ranks 1..n."""
  return 1.0 / np.log2(np.arange(n) + 2.0)


def hit_matrix(ranked: np.ndarray, target_keys: np.ndarray, num_items: int) -> np.ndarray:
  """bool [rows, n]: whether ``ranked[r, j]`` is one of row r's targets.

  ``target_keys``: every target as row * num_items + item, sorted. Slots outside
  [0, num_items) (-1 for an empty slot, padding columns) are never hits.
  """
  ranked = np.asarray(ranked, np.int64)
  if len(target_keys) == 0:
    return np.zeros(ranked.shape, bool)
  ranked_keys = np.arange(len(ranked), dtype=np.int64)[:, None] * num_items + ranked
  found = np.minimum(np.searchsorted(target_keys, ranked_keys), len(target_keys) - 1)
  return (target_keys[found] == ranked_keys) & (ranked >= 0) & (ranked < num_items)


class Cutoffs:
  """Per-row Recall@K, NDCG@K and HitRate@K of hit matrices [rows, depth] at fixed ks."""

  def __init__(self, ks: Sequence[int], depth: int):
    self.ks, self.depth = tuple(int(k) for k in ks), int(depth)
    self.discount = discounts(self.depth)
    # Ideal DCG of the first n hits, at n - 1 (n up to the largest K, even past the depth).
    self.ideal = np.cumsum(discounts(max(self.depth, *self.ks)))

  def per_row(self, hits: np.ndarray, num_targets: np.ndarray
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(K, recall, ndcg, hit rate) per K, each [rows]; every row has a target."""
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * self.discount, axis=1)
    for k in self.ks:
      at = min(k, self.depth) - 1
      ideal_hits = np.minimum(k, num_targets)
      yield (k, cum_hits[:, at] / ideal_hits, cum_dcg[:, at] / self.ideal[ideal_hits - 1],
             cum_hits[:, at] > 0)

  def random_per_row(self, num_targets: np.ndarray, num_candidates: np.ndarray
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(K, recall, ndcg) per K, each [rows]: their expectation under a uniformly random
    ranking of a row's ``num_candidates`` items, ``num_targets`` (>= 1, <= candidates) of
    them targets. Exact, not sampled: each of the top m = min(K, candidates) ranks holds a
    target with probability targets / candidates, so the expected hits are m * t / n and
    the expected DCG is t / n times the discounts of ranks 1..m; the denominators
    (min(K, t) and its ideal DCG) are fixed per row, so the expected ratio is the ratio of
    these expectations."""
    t = np.asarray(num_targets, np.int64)
    n = np.asarray(num_candidates, np.int64)
    share = t / n
    for k in self.ks:
      ranked = np.minimum(k, n)   # >= 1: a row has a target, so a candidate
      ideal_hits = np.minimum(k, t)
      yield (k, ranked * share / ideal_hits,
             share * self.ideal[ranked - 1] / self.ideal[ideal_hits - 1])


def reciprocal_ranks(hits: np.ndarray) -> np.ndarray:
  """1 / the rank of each row's first hit; 0 for a row without one."""
  out = np.zeros(len(hits))
  found = hits.any(axis=1)
  out[found] = 1.0 / (np.argmax(hits[found], axis=1) + 1)
  return out
