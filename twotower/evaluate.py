"""Exact full-corpus retrieval metrics: Recall@K, NDCG@K, HitRate@K and MRR.

The protocol (docs/design.md, "Evaluation protocol"): every item of the corpus is scored by dot
product, a user's excluded items (their training items) are never ranked, equal scores go to
the lower item index, Recall@K divides by min(K, |targets|), NDCG@K uses binary gains and an
ideal DCG over min(K, |targets|) hits, MRR is 1 / the full-corpus rank of the best-ranked
target. Every metric is a mean over the evaluated users.

A target that is also excluded cannot be retrieved, so it is dropped from the targets rather
than left to cap the user's recall below 1 for a reason no model can affect; users left
with no targets (or with none to begin with) are skipped and counted in
``num_users_skipped``.

Slices (``slices``: named item masks, e.g. ``cold_slices``: the cold items, with no training
event in the data the evaluated model trained on, and the warm ones) are read off the same
top-k lists, not a second pass over the corpus. A slice keeps only the targets whose item is
in it as the relevant set; the ranking is unchanged (other items still take ranks). Per user
with at least one slice target: Recall@K = slice targets in the top K / min(K, slice
targets), NDCG@K = DCG of the slice targets in the top K / the ideal DCG of min(K, slice
targets) hits, HitRate@K = any slice target in the top K; each a mean over the users with a
slice target (``num_users``; ``num_targets`` counts their slice targets). ``random_recall@K``
and ``random_ndcg@K`` are the exact expectation of a uniformly random ranking of each user's
non-excluded corpus, averaged the same way (``metrics.Cutoffs.random_per_row``). A slice no
target falls in has only its counts, never a NaN.

Cost and memory: users are scored in chunks so that no score matrix holds more than
``max_chunk_elements`` floats (a million-item corpus never needs a users x items array).
The ranking is ``twotower.topk``'s (the one exact top-k: chunks, workers, exclusions, ties).
Per chunk there is one matmul and two cheap passes over its scores: a per-block maximum that
narrows the top-k search to the k best blocks, and, for users with no target in the top k,
a count of the items scoring above their best target (the exact MRR rank). On CPU all of it
is numpy, on an accelerator TensorFlow, where the scores are.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from twotower import metrics as metrics_lib
from twotower import topk
from twotower.data import keys as keys_lib
from twotower.data.itemsets import ItemSets

DEFAULT_KS = (10, 20, 50, 100)
DEFAULT_MAX_CHUNK_ELEMENTS = topk.DEFAULT_MAX_CHUNK_ELEMENTS
# A count task covers whole score rows, about this many scores, so small corpora are not
# counted one Python call per user.
_COUNT_TASK_ELEMENTS = 1 << 20


# -- public API ----------------------------------------------------------------------------


def retrieval_metrics(query_embeddings: np.ndarray,
                      item_embeddings: np.ndarray,
                      targets: ItemSets,
                      exclude: ItemSets | None = None,
                      ks: Sequence[int] = DEFAULT_KS,
                      max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
                      progress: bool = False,
                      slices: Mapping[str, np.ndarray] | None = None) -> dict:
  """Exact metrics of ranking the whole corpus for every user (see the module docstring).

  Args:
    query_embeddings: float32 [U, D], one row per user.
    item_embeddings: float32 [N, D], the corpus.
    targets: U rows of held-out item indices.
    exclude: U rows of item indices never ranked (the user's training items), or None.
    ks: the cutoffs K; a K above N counts as N for the ranked list.
    max_chunk_elements: the most scores held at once, over all workers (users scored at a
      time = this // N).
    progress: show a progress bar over chunks.
    slices: name -> bool [N] item mask (``cold_slices``); each adds a ``name`` entry.

  Returns:
    ``recall@K``, ``ndcg@K``, ``hit_rate@K`` for each K, ``mrr``, ``num_users`` (evaluated)
    and ``num_users_skipped`` (no target left after exclusions). With no user evaluated the
    metrics are 0.0, so the dict keeps its keys and stays valid JSON. Per slice, a dict:
    ``num_items`` (corpus items in it), ``num_targets``, ``num_users`` and, when these are
    not 0, its ``recall@K``, ``ndcg@K``, ``hit_rate@K``, ``random_recall@K`` and
    ``random_ndcg@K`` (the module docstring).
  """
  items = topk.check_items(item_embeddings)
  queries = topk.check_queries(query_embeddings, items)
  evaluated = _Evaluated.of(targets, exclude, len(queries), len(items), ks, slices)
  metrics = evaluated.metrics
  if len(evaluated.kept):
    num_items = len(items)

    def consume(start, scores, _, top_indices, maxima):
      keys = evaluated.keys(start, len(top_indices))

      def best_ranks(missed: np.ndarray) -> np.ndarray:
        best, best_item = _best_targets(scores, keys, missed, num_items)
        return _count_ahead(scores, missed, best, best_item, maxima)

      metrics.add(start, np.asarray(top_indices).astype(np.int64, copy=False), keys,
                  num_items, best_ranks)

    topk.for_each_chunk(queries[evaluated.kept], topk.Corpus(items).layout(metrics.depth),
                        evaluated.exclude, max_chunk_elements, progress, consume)
  return evaluated.result()


def most_popular_metrics(train_item_counts: np.ndarray,
                         targets: ItemSets,
                         exclude: ItemSets | None = None,
                         ks: Sequence[int] = DEFAULT_KS,
                         users_per_chunk: int = 1 << 13,
                         slices: Mapping[str, np.ndarray] | None = None) -> dict:
  """The same metrics for ranking every user's items by training popularity (equal counts:
  lower index first), with the identical protocol, exclusions and slices.

  Every user's list is the one popularity order less their excluded items, so it is not
  scored: a target at position p of the order ranks p minus the user's excluded items ahead
  of it. The cost is in targets and exclusions, not users x items; scoring 180k users
  against 1M items took as long as evaluating the model (experiments/RESULTS.md).
  ``users_per_chunk`` bounds the top lists held at once.
  """
  counts = np.asarray(train_item_counts)
  if counts.ndim != 1 or len(counts) == 0:
    raise ValueError(f"train_item_counts must be a non-empty 1-D array, got shape {counts.shape}")
  num_items = len(counts)
  evaluated = _Evaluated.of(targets, exclude, targets.num_rows, num_items, ks, slices)
  kept, metrics = evaluated.kept, evaluated.metrics
  if not len(kept):
    return evaluated.result()
  position = np.empty(num_items, np.int64)
  position[np.argsort(-counts.astype(np.int64), kind="stable")] = np.arange(num_items)
  # Every evaluated user's excluded items as sorted keys local row * N + position.
  excluded = evaluated.exclude
  excluded_keys = np.zeros(0, np.int64)
  if excluded is not None:
    excluded_keys = keys_lib.unique(
        ItemSets(excluded.indptr, position[excluded.indices]).keys(num_items))
  keys = evaluated.target_keys
  rows, items = keys // num_items, keys % num_items
  # 0-based rank of each target: its position less the user's excluded items before it.
  rank = position[items] - (np.searchsorted(excluded_keys, rows * num_items + position[items])
                            - np.searchsorted(excluded_keys, rows * num_items))
  best = np.full(len(kept), num_items, np.int64)
  np.minimum.at(best, rows, rank)
  for start in range(0, len(kept), max(1, int(users_per_chunk))):
    end = min(start + users_per_chunk, len(kept))
    lo, hi = evaluated.target_ptr[start], evaluated.target_ptr[end]
    top = np.full((end - start, metrics.depth), -1, np.int64)   # only the hits are needed
    shown = rank[lo:hi] < metrics.depth
    top[rows[lo:hi][shown] - start, rank[lo:hi][shown]] = items[lo:hi][shown]
    metrics.add(start, top, evaluated.keys(start, end - start), num_items,
                best[start:end].take)   # the missed rows' best ranks
  return evaluated.result()


def cold_slices(trained: np.ndarray) -> dict[str, np.ndarray]:
  """The ``slices`` of ``retrieval_metrics`` for cold start: ``cold``, the corpus items
  without a training event in the data the evaluated model trained on (``trained``: bool
  [N], e.g. ``PreparedData.train_item_counts() > 0``), and ``warm``, the others."""
  trained = np.asarray(trained, bool)
  return {"cold": ~trained, "warm": trained}


# -- checks --------------------------------------------------------------------------------


def _check_ks(ks) -> tuple[int, ...]:
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive integers, got {ks}")
  return ks


def _check_slices(slices: Mapping[str, np.ndarray] | None,
                  num_items: int) -> dict[str, np.ndarray]:
  out = {}
  for name, mask in (slices or {}).items():
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (num_items,):
      raise ValueError(f"slice {name!r} must be a bool mask over the {num_items} corpus "
                       f"items, got {mask.dtype} {mask.shape}")
    out[name] = mask
  return out


# -- metrics -------------------------------------------------------------------------------


class _Evaluated:
  """The users an evaluation ranks and their targets, by the module docstring's protocol:
  excluded and duplicate targets dropped, users left with none skipped. ``kept`` are the
  evaluated users (ascending), ``target_keys`` their targets as sorted keys kept row * N +
  item, ``target_ptr`` each kept row's first key, ``exclude`` the kept rows' exclusions."""

  def __init__(self, kept: np.ndarray, target_keys: np.ndarray, target_ptr: np.ndarray,
               exclude: ItemSets | None, metrics: "_UserMetrics", num_skipped: int,
               num_items: int):
    self.kept, self.target_keys, self.target_ptr = kept, target_keys, target_ptr
    self.exclude, self.metrics, self.num_skipped = exclude, metrics, num_skipped
    self.num_items = num_items

  @classmethod
  def of(cls, targets: ItemSets, exclude: ItemSets | None, num_users: int, num_items: int,
         ks: Sequence[int], slices: Mapping[str, np.ndarray] | None) -> "_Evaluated":
    ks = _check_ks(ks)
    targets = topk.check_sets(targets, num_users, num_items, "targets")
    exclude = topk.check_sets(exclude, num_users, num_items, "exclude")
    masks = _check_slices(slices, num_items)
    target_keys = targets.keys(num_items)
    exclude_keys = (keys_lib.unique(exclude.keys(num_items)) if exclude is not None
                    else np.zeros(0, np.int64))
    target_keys = target_keys[~keys_lib.contains(exclude_keys, target_keys)]   # unreachable
    target_keys = keys_lib.unique(target_keys)   # also drops duplicate targets
    counts = np.bincount(target_keys // num_items, minlength=num_users)
    kept = np.flatnonzero(counts)
    # The non-excluded corpus of each evaluated user (a random ranking's candidates).
    candidates = num_items - np.bincount(exclude_keys // num_items, minlength=num_users)[kept]
    metrics = _UserMetrics(ks, min(max(ks), num_items), len(kept), masks, candidates)
    # Only the evaluated users are ranked, in order; their targets as sorted row-major keys.
    target_keys = (np.searchsorted(kept, target_keys // num_items) * num_items
                   + target_keys % num_items)
    target_ptr = np.zeros(len(kept) + 1, np.int64)
    np.cumsum(counts[kept], out=target_ptr[1:])
    if exclude is not None:
      exclude = exclude.subset(kept)
    return cls(kept, target_keys, target_ptr, exclude, metrics, num_users - len(kept),
               num_items)

  def keys(self, start: int, rows: int) -> np.ndarray:
    """The targets of kept rows [start, start + rows) as sorted keys local row * N + item."""
    keys = self.target_keys[self.target_ptr[start]:self.target_ptr[start + rows]]
    return keys - start * self.num_items

  def result(self) -> dict:
    return self.metrics.result(num_users_skipped=self.num_skipped)



class _UserMetrics:
  """Every evaluated user's metric values, filled a chunk at a time (by the workers; a chunk
  writes only its own users' rows).

  Kept per user (U x (3 |ks| + 1) floats, less than the query embeddings) and summed once at
  the end, so the result is bit-identical whatever the chunk size.
  """

  def __init__(self, ks: tuple[int, ...], depth: int, num_users: int,
               slices: Mapping[str, np.ndarray], candidates: np.ndarray):
    self.ks, self.depth = ks, depth
    self.cutoffs = metrics_lib.Cutoffs(ks, depth)
    self.values = np.zeros((num_users, 3 * len(ks) + 1))   # recall, ndcg, hit per K; RR
    self.slices = {name: _SliceMetrics(mask, self.cutoffs, candidates)
                   for name, mask in slices.items()}

  def add(self, start: int, top: np.ndarray, keys: np.ndarray, num_items: int,
          best_ranks: Callable[[np.ndarray], np.ndarray]) -> None:
    """One chunk: top item indices [c, depth], targets as sorted local keys row * N + item;
    ``best_ranks(rows)``: the 0-based full-corpus rank of the best target of each given
    chunk row, asked only for the rows with no target in the top ``depth``."""
    rows = len(top)
    out = self.values[start:start + rows]
    hits = metrics_lib.hit_matrix(top, keys, num_items)   # padding columns are no items
    num_targets = np.bincount(keys // num_items, minlength=rows)
    _fill(out, self.cutoffs.per_row(hits, num_targets))
    for part in self.slices.values():
      part.add(start, top, hits, keys, num_items)
    # MRR: a target in the top k ranks where it was found; the others' rank comes from the
    # whole corpus.
    out[:, -1] = metrics_lib.reciprocal_ranks(hits)
    missed = np.flatnonzero(~hits.any(axis=1))
    if len(missed):
      out[missed, -1] = 1.0 / (best_ranks(missed) + 1.0)

  def result(self, num_users_skipped: int) -> dict:
    means = self.values.mean(axis=0) if len(self.values) else np.zeros(self.values.shape[1])
    out: dict = {}
    for i, k in enumerate(self.ks):
      out[f"recall@{k}"] = float(means[3 * i])
      out[f"ndcg@{k}"] = float(means[3 * i + 1])
      out[f"hit_rate@{k}"] = float(means[3 * i + 2])
    out["mrr"] = float(means[-1])
    out["num_users"] = len(self.values)
    out["num_users_skipped"] = int(num_users_skipped)
    for name, part in self.slices.items():
      out[name] = part.result()
    return out


def _fill(out: np.ndarray, per_row) -> None:
  """Columns 3i, 3i + 1, 3i + 2 of ``out``: recall, ndcg, hit rate at the i-th K."""
  for i, (_, recall, ndcg, hit) in enumerate(per_row):
    out[:, 3 * i], out[:, 3 * i + 1], out[:, 3 * i + 2] = recall, ndcg, hit


class _SliceMetrics:
  """One slice's per-user values (module docstring), from the hit matrices of the whole
  set: a hit counts when its item is in the slice, a target when its item is."""

  def __init__(self, mask: np.ndarray, cutoffs: metrics_lib.Cutoffs, candidates: np.ndarray):
    self.mask, self.cutoffs, self.candidates = mask, cutoffs, candidates
    self.values = np.zeros((len(candidates), 3 * len(cutoffs.ks)))   # recall, ndcg, hit per K
    self.num_targets = np.zeros(len(candidates), np.int64)

  def add(self, start: int, top: np.ndarray, hits: np.ndarray, keys: np.ndarray,
          num_items: int) -> None:
    rows = len(top)
    # Padding slots (-1) are never hits, so any item may stand in for them in the mask.
    hits = hits & self.mask[np.clip(top, 0, num_items - 1)]
    keys = keys[self.mask[keys % num_items]]
    num_targets = np.bincount(keys // num_items, minlength=rows)
    self.num_targets[start:start + rows] = num_targets
    with_targets = np.flatnonzero(num_targets)
    values = np.zeros((len(with_targets), self.values.shape[1]))
    _fill(values, self.cutoffs.per_row(hits[with_targets], num_targets[with_targets]))
    self.values[start + with_targets] = values

  def result(self) -> dict:
    users = np.flatnonzero(self.num_targets)
    out: dict = {"num_items": int(self.mask.sum()),
                 "num_targets": int(self.num_targets.sum()), "num_users": len(users)}
    if not len(users):   # nothing to average: the counts say so
      return out
    means = self.values[users].mean(axis=0)
    for i, k in enumerate(self.cutoffs.ks):
      out[f"recall@{k}"] = float(means[3 * i])
      out[f"ndcg@{k}"] = float(means[3 * i + 1])
      out[f"hit_rate@{k}"] = float(means[3 * i + 2])
    for k, recall, ndcg in self.cutoffs.random_per_row(self.num_targets[users],
                                                       self.candidates[users]):
      out[f"random_recall@{k}"] = float(recall.mean())
      out[f"random_ndcg@{k}"] = float(ndcg.mean())
    return out


def _best_targets(scores: np.ndarray | tf.Tensor, keys: np.ndarray, rows: np.ndarray,
                  num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """Score and item of each given row's best target (highest score, then lowest index)."""
  key_rows = keys // num_items
  selected = np.isin(key_rows, rows)
  key_rows, items = key_rows[selected], keys[selected] % num_items
  if isinstance(scores, tf.Tensor):
    target_scores = tf.gather_nd(scores, np.stack([key_rows, items], axis=1)).numpy()
  else:
    target_scores = scores[key_rows, items]
  order = np.lexsort((items, -target_scores, key_rows))
  first = order[np.r_[True, key_rows[order][1:] != key_rows[order][:-1]]]
  return target_scores[first], items[first]   # rows ascending, as given


def _count_ahead(scores: np.ndarray | tf.Tensor, rows: np.ndarray, best: np.ndarray,
                 best_item: np.ndarray, maxima: Optional[np.ndarray] = None) -> np.ndarray:
  """Per row: items scoring above ``best``, or equal to it with a lower index than ``best_item``.

  Masked items hold -inf and never count. A numpy score matrix is counted in place, one
  compare-and-count pass per row (items before the best target count when >=, after it when
  >) or one broadcast compare over a few short rows; given the block ``maxima``, only over
  the blocks whose maximum reaches ``best`` (a fifth of the corpus on average in
  experiments/bench_eval.py). A tf.Tensor (the accelerator path) is counted with TF, where it lives.
  """
  if isinstance(scores, tf.Tensor):
    return _count_ahead_tf(scores, tf.constant(rows, tf.int32), tf.constant(best),
                           tf.constant(best_item, tf.int32)).numpy().astype(np.int64)
  per_task = max(1, _COUNT_TASK_ELEMENTS // scores.shape[1])
  tasks = [slice(i, i + per_task) for i in range(0, len(rows), per_task)]

  def count_row(r: int, b: np.float32, j: int) -> int:
    row = scores[r]
    if maxima is not None:
      reach = np.flatnonzero(maxima[r] >= b)   # holds the best target's own block
      if 2 * len(reach) < maxima.shape[1]:
        block = scores.shape[1] // maxima.shape[1]
        own = np.searchsorted(reach, j // block)
        start, end = reach[own] * block, (reach[own] + 1) * block
        blocks = row.reshape(-1, block)
        return int(np.count_nonzero(blocks[reach[:own]] >= b) +
                   np.count_nonzero(row[start:j] >= b) + np.count_nonzero(row[j:end] > b) +
                   np.count_nonzero(blocks[reach[own + 1:]] > b))
    return int(np.count_nonzero(row[:j] >= b) + np.count_nonzero(row[j:] > b))

  def count(part: slice) -> np.ndarray:
    r, b, j = rows[part], best[part], best_item[part]
    if len(r) == 1:   # scalar compares: no broadcasting
      return np.array([count_row(r[0], b[0], j[0])])
    block = scores[r]   # a few short rows
    column = np.arange(block.shape[1])
    ahead = (block > b[:, None]) | ((block == b[:, None]) & (column < j[:, None]))
    return np.count_nonzero(ahead, axis=1)

  return np.concatenate([count(task) for task in tasks]).astype(np.int64)


@tf.function(reduce_retracing=True)
def _count_ahead_tf(scores, rows, best, best_item):
  chunk = tf.gather(scores, rows)
  best = best[:, None]
  column = tf.range(tf.shape(chunk)[1])[None, :]
  ahead = (chunk > best) | ((chunk == best) & (column < best_item[:, None]))
  return tf.reduce_sum(tf.cast(ahead, tf.int32), axis=1)
