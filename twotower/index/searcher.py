"""Builds a searcher over item embeddings: a tuned ScaNN tree + asymmetric hashing, or brute force.

``build_searcher`` works on raw arrays: it builds a ScaNN searcher (dot product,
anisotropic quantization, exact float32 reordering) sized from the corpus, then tunes the
search-time knobs (leaves searched, reordering depth) on real queries until recall@k
against the exact top-k reaches a target. Small corpora, and anyone who asks, get exact
brute force instead (``twotower.topk``): below ~20k items a matmul is as fast as an index
and never wrong. ``Index.search`` answers queries either way.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional

import numpy as np
from absl import logging

from twotower import topk
from twotower.data.itemsets import ItemSets
from twotower.data.keys import contains, pair_keys
from twotower.data.keys import unique as unique_keys
from twotower.index import benchmark
from twotower.index.fingerprints import fingerprint

BRUTE_FORCE = "brute_force"
SCANN = "scann"


@dataclasses.dataclass
class Index:
  """Item embeddings plus, for kind 'scann', a pybind ScaNN searcher and its tuned knobs."""
  kind: str
  embeddings: np.ndarray
  searcher: Any = None                       # scann_ops_pybind.ScannSearcher or None
  params: dict = dataclasses.field(default_factory=dict)
  item_ids: Optional[np.ndarray] = None
  tuning: list = dataclasses.field(default_factory=list)
  build_seconds: float = 0.0
  # The embeddings laid out for exact search, made on the first exact query.
  _exact: Optional[topk.Corpus] = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def num_items(self) -> int:
    return len(self.embeddings)

  @property
  def fingerprint(self) -> str:
    return fingerprint(self.embeddings)

  def pre_reorder_for(self, k: int) -> int:
    """Reordering depth for a final k: the tuned depth, scaled with k beyond the tuned k."""
    return int(self._pre_reorder_depths(np.array([k]))[0])

  def _pre_reorder_depths(self, ks: np.ndarray) -> np.ndarray:
    tuned = self.params["pre_reorder_num_neighbors"]
    depth = np.maximum(tuned, np.ceil(tuned * ks / self.params["tuned_k"]).astype(np.int64))
    return np.minimum(np.maximum(depth, ks), self.num_items)

  def search(self, queries: np.ndarray, k: int, *, exact: bool = False,
             exclude: Optional[ItemSets] = None,
             parallel: Optional[bool] = None, leaves_to_search: Optional[int] = None,
             pre_reorder_num_neighbors: Optional[int] = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows [B, k] (int64, -1 where fewer were found) and dot-product scores.

    ``exclude``: one row of corpus rows per query that are never returned (see
    ``_search_excluding`` for the approximate search).
    """
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    k = int(min(k, self.num_items))
    if self.searcher is None or exact:
      if k < 1:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
      if self._exact is None:
        self._exact = topk.Corpus(self.embeddings)
      return topk.top_k_items(queries, self._exact, k, exclude)
    if exclude is not None:
      return self._search_excluding(queries, k, exclude)
    leaves = leaves_to_search or self.params["leaves_to_search"]
    pre = pre_reorder_num_neighbors or self.pre_reorder_for(k)
    if parallel is None:
      parallel = len(queries) >= 64
    search = (self.searcher.search_batched_parallel if parallel
              else self.searcher.search_batched)
    rows, scores = search(queries, k, pre, leaves)
    rows = rows.astype(np.int64)
    missing = np.isnan(scores)
    if missing.any():
      rows[missing] = -1
      scores = np.where(missing, -np.inf, scores).astype(np.float32)
    return rows, scores

  def _search_excluding(self, queries: np.ndarray, k: int,
                        exclude: ItemSets) -> tuple[np.ndarray, np.ndarray]:
    """The approximate top-k without each query's excluded rows: asks for k more than the
    most excluded and drops them, so exclusions are removed before the cut; rows that still
    come back short (fewer than k left found) are searched exactly.

    Queries go in chunks ordered by how many rows they exclude, each asking for k more than
    its own most excluded and holding at most ``_EXCLUDING_NEIGHBORS`` candidates before
    the reorder, so a heavy user deepens only the search of the few users as heavy as they
    are. Queries so heavy that the reorder would score a quarter of the corpus are searched
    exactly. Before, one user with 10,548 events put a 339k-deep reorder into every chunk
    of the 1M-item mining run, which reached 23.3 GB (experiments/RESULTS.md)."""
    lengths = exclude.lengths()
    out_rows = np.full((len(queries), k), -1, np.int64)
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    order = np.argsort(lengths, kind="stable")
    depths = np.minimum(self.num_items, k + lengths[order])   # ascending
    reorder = self._pre_reorder_depths(depths)
    light = int(np.searchsorted(4 * reorder, self.num_items))
    if light < len(order):   # the heaviest: exactly
      heavy = order[light:]
      out_rows[heavy], out_scores[heavy] = self.search(queries[heavy], k, exact=True,
                                                       exclude=exclude.subset(heavy))
    start = 0
    while start < light:
      end = min(start + _EXCLUDING_CHUNK, light)
      end = min(end, start + max(1, _EXCLUDING_NEIGHBORS // int(reorder[end - 1])))
      chunk, depth = order[start:end], int(depths[end - 1])
      start = end
      excluded = exclude.subset(chunk)
      rows, scores = self.search(queries[chunk], depth)
      local = np.arange(len(chunk), dtype=np.int64)
      keep = (rows >= 0) & np.isfinite(scores) & ~contains(
          unique_keys(excluded.keys(self.num_items)),
          pair_keys(local[:, None], rows, self.num_items))
      rank = np.cumsum(keep, axis=1) - 1   # each kept row's place among its query's kept
      keep &= rank < k
      at, _ = np.nonzero(keep)
      out_rows[chunk[at], rank[keep]] = rows[keep]
      out_scores[chunk[at], rank[keep]] = scores[keep]
      want = np.minimum(k, self.num_items - lengths[chunk])
      short = np.flatnonzero(keep.sum(axis=1) < want)
      if len(short):
        exact_rows, exact_scores = self.search(queries[chunk[short]], k, exact=True,
                                               exclude=excluded.subset(short))
        out_rows[chunk[short]], out_scores[chunk[short]] = exact_rows, exact_scores
    return out_rows, out_scores

  def upsert(self, rows: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray,
             batch_size: int = 256) -> None:
    """In place: row ``rows[i]`` takes ``vectors[i]`` and item ``item_ids[i]``; a row of -1
    is appended, in order. A ScaNN searcher changes through its pybind mutator (each new
    vector goes to its nearest leaf and gets its hash codes; the tree and codebook stay as
    trained), brute force through its arrays. Each call copies the [N, D] matrix once."""
    rows = np.asarray(rows, np.int64)
    vectors = np.ascontiguousarray(vectors, np.float32)
    if self.item_ids is None:
      raise ValueError("an index without item ids cannot take new items")
    if vectors.shape != (len(rows), self.embeddings.shape[1]) or len(item_ids) != len(rows):
      raise ValueError(f"upsert: {len(rows)} rows, {len(item_ids)} ids and vectors of shape "
                       f"{vectors.shape} for a {self.embeddings.shape[1]}-dimensional index")
    if not np.isfinite(vectors).all():
      raise ValueError("upsert: the vectors contain NaN or infinite values")
    old = rows >= 0
    added = np.flatnonzero(~old)
    if self.searcher is not None and len(rows):
      targets = [int(r) if r >= 0 else None for r in rows]
      got = np.asarray(self.searcher.searcher.upsert(targets, list(vectors), batch_size),
                       np.int64)
      expected = rows.copy()
      expected[added] = self.num_items + np.arange(len(added))
      if not np.array_equal(got, expected) or self.searcher.size() != self.num_items + len(
          added):
        raise RuntimeError("ScaNN's upsert placed rows other than expected")
    embeddings = np.concatenate([self.embeddings, vectors[added]])
    embeddings[rows[old]] = vectors[old]
    ids = np.concatenate([np.asarray(self.item_ids, dtype=object),
                          np.asarray(item_ids, dtype=object)[added]])
    ids[rows[old]] = np.asarray(item_ids, dtype=object)[old]
    self.embeddings, self.item_ids, self._exact = embeddings, ids, None


# Queries per approximate search with exclusions (Index._search_excluding), and the most
# candidates its chunk holds before the reorder (an index and a distance each in ScaNN).
_EXCLUDING_CHUNK = 1024
_EXCLUDING_NEIGHBORS = 1 << 22


def scann_pybind():
  from scann.scann_ops.py import scann_ops_pybind
  return scann_ops_pybind


def default_num_leaves(num_items: int) -> int:
  """~sqrt(N) partitions (ScaNN's rule of thumb), each holding at least ~100 items."""
  return int(max(2, min(round(math.sqrt(num_items)), num_items // 100)))


def build_searcher(embeddings: np.ndarray, *, recall_target: float = 0.95,
                   sample_queries: Optional[np.ndarray] = None, k: int = 10,
                   brute_force_below: int = 20000, force_brute_force: bool = False,
                   num_leaves: Optional[int] = None, dimensions_per_block: int = 2,
                   anisotropic_quantization_threshold: float = 0.2,
                   training_sample_size: int = 250_000, training_threads: int = 0,
                   max_tuning_seconds: float = 120.0) -> Index:
  """A searcher over ``embeddings`` [N, D] whose recall@k on ``sample_queries`` reaches
  ``recall_target`` (plus two standard errors, so that held-out queries reach it too).

  The tree and the hash codes are built once; only search-time knobs are tuned, so tuning
  costs searches, not rebuilds. Returns an Index of kind 'brute_force' when N is below
  ``brute_force_below`` or when asked.
  """
  embeddings = np.ascontiguousarray(embeddings, np.float32)
  if embeddings.ndim != 2 or len(embeddings) == 0:
    raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got {embeddings.shape}")
  if not 0 < recall_target <= 1:
    raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
  if not np.isfinite(embeddings).all():
    raise ValueError("embeddings contain NaN or infinite values; the model diverged?")
  n, dim = embeddings.shape
  if force_brute_force or n < brute_force_below:
    return Index(BRUTE_FORCE, embeddings, params={"tuned_k": k})
  if sample_queries is None or len(sample_queries) == 0:
    raise ValueError("sample_queries are needed to tune the ScaNN searcher")
  queries = np.ascontiguousarray(sample_queries, np.float32)
  leaves = num_leaves or default_num_leaves(n)
  start = time.perf_counter()
  builder = (scann_pybind().builder(embeddings, k, "dot_product")
             .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20),
                   training_sample_size=min(n, training_sample_size))
             .score_ah(dimensions_per_block,
                       anisotropic_quantization_threshold=anisotropic_quantization_threshold)
             .reorder(min(n, 10 * k)))
  if training_threads:
    builder = builder.set_n_training_threads(training_threads)
  searcher = builder.build()
  build_seconds = time.perf_counter() - start
  logging.info("built a ScaNN searcher over %d x %d in %.1fs (%d leaves)", n, dim,
               build_seconds, leaves)

  index = Index(SCANN, embeddings, searcher, params={
      "num_leaves": leaves, "dimensions_per_block": dimensions_per_block,
      "anisotropic_quantization_threshold": anisotropic_quantization_threshold,
      "reorder": "float32", "tuned_k": k, "recall_target": recall_target},
      build_seconds=build_seconds)
  _tune(index, queries, k, recall_target, max_tuning_seconds)
  return index


def _tune(index: Index, queries: np.ndarray, k: int, target: float,
          max_seconds: float) -> None:
  """Cheapest (leaves, reorder depth) whose recall@k on ``queries`` clears the target.

  For each reordering depth, a binary search over a geometric grid of leaf counts (recall
  grows with both) finds the fewest leaves that reach the goal; the fastest of those wins.
  The goal is the target plus two standard errors of the per-query recall.
  """
  n, leaves = index.num_items, index.params["num_leaves"]
  exact, _ = index.search(queries, k, exact=True)
  leaf_grid = sorted({min(leaves, max(1, round(1.25 ** e))) for e in range(
      int(math.log(leaves, 1.25)) + 2)})
  depth_grid = sorted({min(n, k * m) for m in (2, 4, 8, 16, 32, 64, 128)})
  trials, deadline = [], time.perf_counter() + max_seconds

  def evaluate(num, depth):
    t0 = time.perf_counter()
    rows, _ = index.search(queries, k, parallel=False, leaves_to_search=num,
                           pre_reorder_num_neighbors=depth)
    seconds = time.perf_counter() - t0
    per_query = benchmark.hits(rows, exact) / exact.shape[1]
    trial = {"leaves_to_search": num, "pre_reorder_num_neighbors": depth,
             "recall": round(float(per_query.mean()), 4),
             "stderr": round(float(per_query.std() / math.sqrt(len(per_query))), 4),
             "ms_per_query": round(1000 * seconds / len(queries), 4)}
    trials.append(trial)
    return trial

  def meets(trial):
    return trial["recall"] >= min(target + 2 * trial["stderr"], 1.0)

  feasible = []
  for depth in depth_grid:
    lo, hi = 0, len(leaf_grid) - 1
    top = evaluate(leaf_grid[hi], depth)
    if not meets(top):
      continue
    best = top
    while lo < hi and time.perf_counter() < deadline:
      mid = (lo + hi) // 2
      trial = evaluate(leaf_grid[mid], depth)
      if meets(trial):
        hi, best = mid, trial
      else:
        lo = mid + 1
    feasible.append(best)
    if time.perf_counter() > deadline:
      logging.warning("ScaNN tuning stopped after %.0fs", max_seconds)
      break
  if feasible:
    best = min(feasible, key=lambda t: t["ms_per_query"])
  else:
    best = max(trials, key=lambda t: (t["recall"], -t["ms_per_query"]))
    logging.warning("no setting reached recall@%d >= %.3f; using the best found (%.3f)",
                    k, target, best["recall"])
  index.params.update(leaves_to_search=best["leaves_to_search"],
                      pre_reorder_num_neighbors=best["pre_reorder_num_neighbors"],
                      tuning_recall=best["recall"], tuning_stderr=best["stderr"],
                      tuning_queries=len(queries))
  index.tuning = trials
  logging.info("tuned ScaNN: %s", best)


