"""The one exact top-k (twotower.topk): a reusable corpus layout, the TensorFlow twin the
export traces, and the index's brute force, all ranking as evaluation does."""
import numpy as np
import pytest
import tensorflow as tf

from twotower import index as index_lib
from twotower import topk
from twotower.data.itemsets import ItemSets


def tied_case(seed=0, num_queries=9, num_items=300, dim=3):
  """Small integer embeddings: many equal scores, so tie-breaking decides the order."""
  rng = np.random.default_rng(seed)
  queries = rng.integers(-2, 3, (num_queries, dim)).astype(np.float32)
  items = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
  exclude = [rng.choice(num_items, rng.integers(0, 20), replace=False) for _ in queries]
  return queries, items, exclude


def reference(queries, items, k, exclude):
  """Best first, equal scores lower index first, excluded items never (lexsort)."""
  out = []
  for q, ex in zip(queries, exclude):
    scores = items @ q
    keep = np.setdiff1d(np.arange(len(items)), ex)
    order = keep[np.lexsort((keep, -scores[keep]))]
    out.append(order[:k])
  return np.array(out)


def test_a_reused_corpus_ranks_as_a_bare_array(monkeypatch):
  # 75 blocks of 4 items: k <= 9 takes the two-stage top-k, k = 40 a plain one.
  monkeypatch.setattr(topk, "_BLOCK", 4)
  queries, items, exclude = tied_case()
  corpus = topk.Corpus(items)
  for k in (5, 1, 40, 9, 5):   # layouts reused across calls and ks
    want = reference(queries, items, k, exclude)
    got, _ = topk.top_k_items(queries, corpus, k, ItemSets.from_lists(exclude))
    np.testing.assert_array_equal(got, want)
    bare, _ = topk.top_k_items(queries, items, k, ItemSets.from_lists(exclude),
                               max_chunk_elements=len(items))
    np.testing.assert_array_equal(bare, want)
  assert len(corpus._layouts) == 2   # pylint: disable=protected-access


@pytest.mark.parametrize("block", [0, 4])
def test_the_tensorflow_twin_ranks_as_numpy(block):
  queries, items, _ = tied_case(seed=3, num_items=64)
  scores = queries @ items.T
  k = 6
  values, indices, _ = topk._top_k(scores.copy(), k, block)   # pylint: disable=protected-access
  tf_values, tf_indices = topk.top_k_tf(tf.constant(scores), tf.constant(k), block)
  np.testing.assert_array_equal(tf_indices.numpy(), indices)
  np.testing.assert_array_equal(tf_values.numpy(), values)
  np.testing.assert_array_equal(indices, reference(queries, items, k, [[]] * len(queries)))


def test_the_brute_force_index_excludes_and_breaks_ties_like_evaluation():
  queries, items, exclude = tied_case(seed=5)
  index = index_lib.Index(index_lib.BRUTE_FORCE, items)
  rows, scores = index.search(queries, 12, exclude=ItemSets.from_lists(exclude))
  np.testing.assert_array_equal(rows, reference(queries, items, 12, exclude))
  np.testing.assert_array_equal(scores, np.take_along_axis(queries @ items.T, rows, axis=1))
  # Everything but two items excluded: the other slots are empty (-1, -inf).
  rows, scores = index.search(queries[:1], 4,
                              exclude=ItemSets.from_lists([np.arange(2, len(items))]))
  np.testing.assert_array_equal(rows[0, 2:], [-1, -1])
  assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()


def test_an_approximate_search_drops_exclusions_before_the_cut_and_fills_short_rows():
  # 200 items: a reorder of 4 x 14 stays under a quarter of the corpus, so both queries
  # go through the (fake) approximate searcher rather than exactly.
  queries, items, _ = tied_case(seed=7, num_queries=2, num_items=200)
  answers = np.array([[3, 1, 4, 15, 9, 2, 6, 5],   # approximate, not the exact order
                      [7, 8, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]])

  class Searcher:   # a ScaNN searcher's batched search: rows and scores, NaN for missing
    def search_batched(self, q, k, *_):
      assert k == 4 + 3   # k plus the most excluded rows
      which = [int(np.flatnonzero((queries == row).all(axis=1))[0]) for row in q]
      rows = np.nan_to_num(answers[which, :k], nan=0).astype(np.int32)
      return rows, np.where(np.isnan(answers[which, :k]), np.nan, 1.0).astype(np.float32)

  index = index_lib.Index(index_lib.SCANN, items, Searcher(),
                          {"leaves_to_search": 1, "pre_reorder_num_neighbors": 8, "tuned_k": 4})
  exclude = [[1, 15, 40], [8]]
  rows, _ = index.search(queries, 4, exclude=ItemSets.from_lists(exclude))
  np.testing.assert_array_equal(rows[0], [3, 4, 9, 2])   # the searcher's order, 1 and 15 out
  # The second query's search found 2 rows, one excluded: it is searched exactly.
  np.testing.assert_array_equal(rows[1], reference(queries[1:], items, 4, exclude[1:])[0])
