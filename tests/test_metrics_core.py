"""The ranked-list metric core (twotower.metrics) against the definitions, row by row."""
import math

import numpy as np
import pytest

from twotower import metrics, ranking_metrics


def reference(ranked_row, targets, k):
  """Recall, NDCG, hit rate at k and reciprocal rank of one ranked list, from the definitions."""
  top = [i for i in ranked_row[:k]]
  hits = [i >= 0 and i in targets for i in top]
  ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(targets))))
  dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
  ranks = [r + 1 for r, i in enumerate(ranked_row) if i >= 0 and i in targets]
  return (sum(hits) / min(k, len(targets)), dcg / ideal, float(any(hits)),
          1 / ranks[0] if ranks else 0.0)


def keys_of(targets, num_items):
  return np.sort(np.array([r * num_items + t for r, ts in enumerate(targets) for t in ts],
                          np.int64))


def test_hit_matrix_ignores_empty_and_padding_slots():
  num_items = 5
  # Row 1's -1 would be key 1 * 5 - 1 = 4, row 0's item 4; 7 is a padding column.
  ranked = np.array([[4, 0, 7], [-1, 2, 3]])
  targets = [[4], [1, 2]]
  got = metrics.hit_matrix(ranked, keys_of(targets, num_items), num_items)
  np.testing.assert_array_equal(got, [[True, False, False], [False, True, False]])
  assert not metrics.hit_matrix(ranked, np.zeros(0, np.int64), num_items).any()


@pytest.mark.parametrize("ks", [(1, 3, 5), (2, 8)])   # 8 > the depth of 6
def test_cutoffs_and_reciprocal_ranks_match_the_definitions(ks):
  rng = np.random.default_rng(len(ks))
  num_items, depth = 30, 6
  ranked = np.stack([rng.permutation(num_items)[:depth] for _ in range(40)])
  ranked[::5, -2:] = -1   # short lists
  targets = [list(rng.choice(num_items, rng.integers(1, 12), replace=False)) for _ in ranked]
  targets[0] = list(ranked[0, :depth - 2])   # more hits than some cutoffs
  hits = metrics.hit_matrix(ranked, keys_of(targets, num_items), num_items)
  sizes = np.array([len(t) for t in targets])
  rows = list(metrics.Cutoffs(ks, depth).per_row(hits, sizes))
  assert [k for k, *_ in rows] == list(ks)
  rr = metrics.reciprocal_ranks(hits)
  for u, row in enumerate(ranked):
    for k, recall, ndcg, hit in rows:
      want = reference(list(row), set(targets[u]), k)
      assert (recall[u], ndcg[u], hit[u]) == pytest.approx(want[:3]), (u, k)
    assert rr[u] == pytest.approx(reference(list(row), set(targets[u]), depth)[3])


def test_impression_ndcg_agrees_with_the_ranked_list_ndcg_without_ties():
  # One user's binary impressions with distinct scores are a ranked list: the impression
  # metrics (ranking_metrics) and the core must give the same NDCG.
  labels = np.array([0, 1, 0, 0, 1, 1, 0, 0], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
  ranked = np.arange(8)[None, :]
  hits = metrics.hit_matrix(ranked, keys_of([np.flatnonzero(labels)], 8), 8)
  for k in (2, 5, 8):
    (_, _, ndcg, _), = metrics.Cutoffs((k,), 8).per_row(hits, np.array([3]))
    assert ranking_metrics.ndcg(labels, scores, np.zeros(8), k) == pytest.approx(ndcg[0])
