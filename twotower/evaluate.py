"""Exact full-corpus retrieval metrics: Recall@K, NDCG@K, HitRate@K and MRR.

The protocol (DESIGN.md, "Evaluation protocol"): every item of the corpus is scored by dot
product, a user's excluded items (their training items) are never ranked, equal scores go to
the lower item index, Recall@K divides by min(K, |targets|), NDCG@K uses binary gains and an
ideal DCG over min(K, |targets|) hits, MRR is 1 / the full-corpus rank of the best-ranked
target. Every metric is a mean over the evaluated users.

A target that is also excluded cannot be retrieved, so it is dropped from the targets rather
than left to cap the user's recall below 1 for a reason no model can affect; users left
with no targets (or with none to begin with) are skipped and counted in
``num_users_skipped``.

Cost and memory: users are scored in chunks so that no score matrix holds more than
``max_chunk_elements`` floats (a million-item corpus never needs a users x items array).
Per chunk there is one matmul and two cheap passes over its scores: a per-block maximum that
narrows the top-k search to the k best blocks, and, for users with no target in the top k,
a count of the items scoring above their best target (the exact MRR rank). On CPU all of it
is numpy, chunks split between workers with a reused score buffer each (numpy's BLAS
multiplies these shapes about twice as fast as tf.matmul, and exclusions are set in place);
on an accelerator it is TensorFlow, where the scores are.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import threadpoolctl

from twotower import cpus as cpus_lib
from twotower.data.itemsets import ItemSets

DEFAULT_KS = (10, 20, 50, 100)
# Most scores held at once by default: 256 MB of float32; for a 1M-item corpus, two workers
# of 33 users each on two cores. Fewer users per matmul re-read the corpus for less work
# (experiments/RESULTS.md, "Exact evaluation and input at scale").
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 26

# Items per block in the two-stage top-k; a corpus under _MIN_BLOCKS_PER_K * k blocks takes
# a plain top_k instead (blocking only pays when the k best blocks are a small fraction).
_BLOCK = 256
_MIN_BLOCKS_PER_K = 8
# A count task covers whole score rows, about this many scores, so small corpora are not
# counted one Python call per user.
_COUNT_TASK_ELEMENTS = 1 << 20
# Fewest queries in one worker's chunk (see _worker_plan).
_MIN_WORKER_ROWS = 32
# One evaluation on workers at a time: each already keeps every core busy, and numpy's BLAS
# thread limit is process-wide (threadpoolctl lets one thread at a time set it, so the
# second of two overlapping evaluations would run unlimited once the first lifted it).
_workers_lock = threading.Lock()
# Items transposed at a time when the corpus is laid out.
_TRANSPOSE_ROWS = 1 << 12
# Most scores in one plain (unblocked) top-k step: bounds its temporaries.
_TOP_K_ELEMENTS = 1 << 20


# -- public API ----------------------------------------------------------------------------


def retrieval_metrics(query_embeddings: np.ndarray,
                      item_embeddings: np.ndarray,
                      targets: ItemSets,
                      exclude: ItemSets | None = None,
                      ks: Sequence[int] = DEFAULT_KS,
                      max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
                      progress: bool = False) -> dict[str, float]:
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

  Returns:
    ``recall@K``, ``ndcg@K``, ``hit_rate@K`` for each K, ``mrr``, ``num_users`` (evaluated)
    and ``num_users_skipped`` (no target left after exclusions). With no user evaluated the
    metrics are 0.0, so the dict keeps its keys and stays valid JSON.
  """
  queries, items = _check_embeddings(query_embeddings, item_embeddings)
  num_users, num_items = len(queries), len(items)
  ks = _check_ks(ks)
  targets = _check_sets(targets, num_users, num_items, "targets")
  exclude = _check_sets(exclude, num_users, num_items, "exclude")
  target_keys = _pair_keys(targets, num_items)
  if exclude is not None:   # excluded targets cannot be retrieved: drop them
    target_keys = target_keys[~np.isin(target_keys, _pair_keys(exclude, num_items))]
  target_keys = np.unique(target_keys)   # also drops duplicate targets
  counts = np.bincount(target_keys // num_items, minlength=num_users)
  kept = np.flatnonzero(counts)
  metrics = _UserMetrics(ks, min(max(ks), num_items), len(kept))
  if len(kept):
    # Only the evaluated users are scored, in order; their targets as sorted row-major keys.
    target_keys = (np.searchsorted(kept, target_keys // num_items) * num_items
                   + target_keys % num_items)
    target_ptr = np.zeros(len(kept) + 1, np.int64)
    np.cumsum(counts[kept], out=target_ptr[1:])
    exclude = exclude.subset(kept) if exclude is not None else None

    def consume(start, scores, _, top_indices, maxima):
      keys = target_keys[target_ptr[start]:target_ptr[start + len(top_indices)]]
      metrics.add(start, scores, np.asarray(top_indices).astype(np.int64, copy=False),
                  keys - start * num_items, num_items, maxima)

    _for_each_chunk(queries[kept], _corpus(items, metrics.depth), exclude, max_chunk_elements,
                    progress, consume)
  return metrics.result(num_users_skipped=num_users - len(kept))


def top_k_items(query_embeddings: np.ndarray,
                item_embeddings: np.ndarray,
                k: int,
                exclude: ItemSets | None = None,
                max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS
                ) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k items of every query, best first, equal scores in item-index order.

  Same chunking, exclusion and tie-breaking as ``retrieval_metrics``, so serving and the
  ranking stage see the candidates the metrics were measured on.

  Returns:
    (indices int64 [U, k], scores float32 [U, k]); where fewer than k items are left (a small
    corpus, or everything else excluded) the remaining slots hold index -1 and score -inf.
  """
  queries, items = _check_embeddings(query_embeddings, item_embeddings)
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  exclude = _check_sets(exclude, len(queries), len(items), "exclude")
  indices = np.full((len(queries), k), -1, np.int64)
  scores = np.full((len(queries), k), -np.inf, np.float32)
  depth = min(k, len(items))

  def consume(start, _, values, top, __):
    values, top = np.asarray(values), np.asarray(top)
    end = start + len(top)
    scores[start:end, :depth] = values
    indices[start:end, :depth] = np.where(values == -np.inf, -1, top)

  _for_each_chunk(queries, _corpus(items, depth), exclude, max_chunk_elements, False, consume)
  return indices, scores


def most_popular_metrics(train_item_counts: np.ndarray,
                         targets: ItemSets,
                         exclude: ItemSets | None = None,
                         ks: Sequence[int] = DEFAULT_KS,
                         max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> dict[str, float]:
  """The same metrics for ranking every user's items by training popularity.

  Runs through ``retrieval_metrics`` with 1-dimensional embeddings (query 1, item = the dense
  rank of its count), so the baseline gets the identical protocol, exclusions and tie-break
  (equal counts: lower index first). Dense ranks rather than raw counts keep the scores exact
  in float32 however large the counts grow.
  """
  counts = np.asarray(train_item_counts)
  if counts.ndim != 1 or len(counts) == 0:
    raise ValueError(f"train_item_counts must be a non-empty 1-D array, got shape {counts.shape}")
  _, dense_rank = np.unique(counts, return_inverse=True)
  items = dense_rank.astype(np.float32).reshape(-1, 1)
  queries = np.ones((targets.num_rows, 1), np.float32)
  return retrieval_metrics(queries, items, targets, exclude, ks, max_chunk_elements)


def evaluate_workdir(workdir: str, ks: Sequence[int] | None = None) -> dict:
  """Metrics of a finished run's best model on validation and test (twotower-evaluate).

  Also stored under ``evaluation`` in the run's metrics.json, next to what training wrote.
  """
  from twotower import fileio
  from twotower import workdir as workdir_lib
  from twotower.data import splits
  from twotower.model.encoding import Encoder
  from twotower.train import loop

  run = workdir_lib.load_trained(workdir)
  config = run.config
  if ks:
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, eval_ks=tuple(int(k) for k in ks)))
  encoder = Encoder(run.model, run.data)
  result = {
      "valid": loop.split_metrics(run.model, run.data, splits.VALID, config, encoder),
      "test": loop.split_metrics(run.model, run.data, splits.TEST, config, encoder),
      "most_popular_test": loop.most_popular_metrics(run.data, splits.TEST, config),
  }
  path = workdir_lib.Workdir(workdir).metrics
  log = fileio.read_json(path) if os.path.exists(path) else {}
  log["evaluation"] = result
  fileio.atomic_write_json(path, log)
  return result


# -- chunked scoring -----------------------------------------------------------------------


@dataclasses.dataclass
class _Corpus:
  """Items laid out for the chunk matmul, and how each chunk's top-k is found."""
  items_t: np.ndarray | tf.Tensor   # [D, padded N]; a tf.Tensor on the TensorFlow path
  num_items: int
  num_padded: int
  depth: int           # k of the chunk top-k
  block: int           # block size of the two-stage top-k; 0: a plain top_k


def _use_tf() -> bool:
  """Whether to score with TensorFlow: where it has an accelerator to run on."""
  return any(d.device_type != "CPU" for d in tf.config.list_logical_devices())


def _corpus(items: np.ndarray, depth: int) -> _Corpus:
  # Transposed once so each chunk is a plain [c, D] x [D, N] product (measurably faster on
  # CPU than a transposed operand); for the two-stage top-k padded with zero columns to whole
  # blocks, which every chunk masks to -inf.
  num_items = len(items)
  block = _block_size(num_items, depth)
  num_padded = -(-num_items // block) * block if block else num_items
  items_t = np.zeros((items.shape[1], num_padded), np.float32)
  for start in range(0, num_items, _TRANSPOSE_ROWS):   # in slices: a cache-friendly copy
    end = min(start + _TRANSPOSE_ROWS, num_items)
    items_t[:, start:end] = items[start:end].T
  if _use_tf():
    items_t = tf.constant(items_t)
  return _Corpus(items_t, num_items, num_padded, depth, block)


def _check_embeddings(query_embeddings, item_embeddings) -> tuple[np.ndarray, np.ndarray]:
  queries = np.asarray(query_embeddings, np.float32)
  items = np.asarray(item_embeddings, np.float32)
  if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
    raise ValueError(f"query and item embeddings must be [U, D] and [N, D] with the same D, "
                     f"got {queries.shape} and {items.shape}")
  if len(items) == 0:
    raise ValueError("the item corpus is empty")
  return queries, items


def _check_ks(ks) -> tuple[int, ...]:
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive integers, got {ks}")
  return ks


def _check_sets(sets: ItemSets | None, num_rows: int, num_items: int,
                name: str) -> ItemSets | None:
  if sets is None:
    return None
  sets = ItemSets(np.asarray(sets.indptr, np.int64), np.asarray(sets.indices, np.int64))
  if sets.num_rows != num_rows:
    raise ValueError(f"{name} has {sets.num_rows} rows but there are {num_rows} queries")
  if len(sets.indices) and (sets.indices.min() < 0 or sets.indices.max() >= num_items):
    raise ValueError(f"{name} holds item indices outside [0, {num_items})")
  return sets


def _pair_keys(sets: ItemSets, num_items: int) -> np.ndarray:
  """row * N + item for every (row, item) of the sets, in CSR order."""
  rows = np.repeat(np.arange(sets.num_rows, dtype=np.int64), sets.lengths())
  return rows * num_items + sets.indices


def _block_size(num_items: int, k: int) -> int:
  """Block size of the two-stage top-k, or 0 for a plain top_k over the chunk."""
  return _BLOCK if -(-num_items // _BLOCK) >= _MIN_BLOCKS_PER_K * k else 0


def _for_each_chunk(queries: np.ndarray, corpus: _Corpus, exclude: ItemSets | None,
                    max_chunk_elements: int, progress: bool, consume) -> None:
  """Scores ``queries`` in chunks and calls ``consume(first row, scores [c, padded N],
  top values [c, k], top indices [c, k], block maxima [c, padded N / block] or None)`` for
  each, in no particular order.

  On CPU the chunks go to workers (see ``_worker_plan``), each with its own score buffer that
  its next chunk overwrites, so ``consume`` runs on those threads and must use the scores
  before it returns and touch only its own rows of any shared output.
  """
  rows = max(1, int(max_chunk_elements) // corpus.num_items)
  on_tf = isinstance(corpus.items_t, tf.Tensor)
  if on_tf:
    workers, chunk, blas_threads = 1, rows, 0
  else:
    workers, chunk, blas_threads = _worker_plan(rows, len(queries))
  starts = range(0, len(queries), chunk)
  bar = None
  if progress:
    import tf_keras  # deferred: only for the bar
    bar = tf_keras.utils.Progbar(len(starts), unit_name="chunk")
  if on_tf:   # padding columns, masked with the exclusions
    pad = np.arange(corpus.num_items, corpus.num_padded, dtype=np.int64)
  lock = threading.Lock()
  todo, done, failed = iter(starts), [0], threading.Event()

  def score(start: int, buffer: Optional[np.ndarray]) -> None:
    end = min(start + chunk, len(queries))
    if on_tf:
      masked = _masked_pairs(exclude, start, end, pad)
      scores, values, indices = _score_chunk(tf.constant(queries[start:end]), corpus.items_t,
                                             tf.constant(masked), corpus.depth, corpus.block)
      maxima = None
    else:
      scores = buffer[:end - start]
      np.matmul(queries[start:end], corpus.items_t, out=scores)
      scores[:, corpus.num_items:] = -np.inf   # padding columns
      if exclude is not None:
        lo, hi = exclude.indptr[start], exclude.indptr[end]
        local = np.repeat(np.arange(end - start), np.diff(exclude.indptr[start:end + 1]))
        scores[local, exclude.indices[lo:hi]] = -np.inf
      values, indices, maxima = _top_k(scores, corpus.depth, corpus.block)
    consume(start, scores, values, indices, maxima)

  def work(buffer: Optional[np.ndarray]) -> None:
    try:
      while not failed.is_set():
        with lock:
          start = next(todo, None)
        if start is None:
          return
        score(start, buffer)
        with lock:
          done[0] += 1
          if bar is not None:
            bar.update(done[0])
    except BaseException:
      failed.set()   # the other workers stop after their current chunk
      raise

  buffers = [None] if on_tf else [
      np.empty((min(chunk, len(queries)), corpus.num_padded), np.float32)
      for _ in range(workers)]
  if workers == 1:
    work(buffers[0])
    return
  with _workers_lock, threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas"):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(work, buffers))   # re-raises a worker's error


def _worker_plan(rows: int, num_queries: int) -> tuple[int, int, int]:
  """(workers, queries per worker's chunk, BLAS threads per worker) for ``rows`` scored
  queries at a time in all.

  One matmul on all cores leaves them idle (or spinning) through the passes over its scores
  that follow. Splitting the rows between workers with a share of the cores each lets one
  worker's passes overlap another's matmul: on 2 cores, with 2 workers of one BLAS thread
  each, evaluation over 1M items costs 1.45x the bare products, against 1.60x with one
  product on both cores (experiments/RESULTS.md).
  A worker's chunk stays at least ``_MIN_WORKER_ROWS`` queries, below which its matmul
  re-reads the corpus for too little arithmetic.
  """
  cpus = cpus_lib.available()
  workers = max(1, min(cpus, rows // _MIN_WORKER_ROWS, -(-num_queries // _MIN_WORKER_ROWS)))
  chunk = max(1, min(rows // workers, -(-num_queries // workers)))
  return workers, chunk, max(1, cpus // workers)


def _top_k(scores: np.ndarray, k: int,
           block: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
  """(values, indices) [c, k] of the best scores per row, equal scores lower index first;
  and the block maxima when ``block``.

  The numpy twin of ``_score_chunk``'s top-k, two-stage when ``block``. NaN scores (from
  non-finite embeddings) are set to -inf first, so they rank as excluded items do.
  """
  rows = len(scores)
  if not block:
    top = np.empty((rows, k), np.int64)
    step = max(1, _TOP_K_ELEMENTS // scores.shape[1])
    for r in range(0, rows, step):
      part = scores[r:r + step]
      top[r:r + step] = _best_first(part, _largest(part, k))
    return np.take_along_axis(scores, top, axis=1), top, None
  blocks = scores.reshape(rows, -1, block)
  maxima = np.max(blocks, axis=2)
  if np.isnan(maxima).any():   # a NaN hides its block's maximum
    scores[np.isnan(scores)] = -np.inf
    maxima = np.max(blocks, axis=2)
  chosen = _largest(maxima, k)   # see _score_chunk for why this is exact
  candidates = blocks[np.arange(rows)[:, None], chosen].reshape(rows, k * block)
  position = _best_first(candidates, _largest(candidates, k))
  indices = np.take_along_axis(chosen, position // block, axis=1) * block + position % block
  return np.take_along_axis(candidates, position, axis=1), indices, maxima


def _largest(x: np.ndarray, k: int) -> np.ndarray:
  """Column indices [rows, k] of each row's k largest values, ascending; of equal values the
  lowest indices. NaN in ``x`` become -inf (in place)."""
  n = x.shape[1]
  kth = np.partition(x, n - k, axis=1)[:, n - k, None]
  keep = x >= kth
  count = np.count_nonzero(keep, axis=1)
  if (count < k).any():
    # Only NaN do this: np.partition sorts them last, into the k largest, but they compare
    # unequal to everything.
    x[np.isnan(x)] = -np.inf
    return _largest(x, k)
  for r in np.flatnonzero(count > k):   # more values equal to the kth than slots for them
    tied = np.flatnonzero(x[r] == kth[r])
    keep[r, tied[k - (count[r] - len(tied)):]] = False   # the lowest indices keep theirs
  return (np.flatnonzero(keep) % n).reshape(len(x), k)


def _best_first(x: np.ndarray, columns: np.ndarray) -> np.ndarray:
  """``columns`` (ascending per row) ordered by descending value of x, ties kept ascending."""
  order = np.argsort(-np.take_along_axis(x, columns, axis=1), axis=1, kind="stable")
  return np.take_along_axis(columns, order, axis=1)


def _masked_pairs(exclude: ItemSets | None, start: int, end: int,
                  pad: np.ndarray) -> np.ndarray:
  """(local row, item) pairs set to -inf in a chunk: exclusions and padding columns."""
  rows = [np.repeat(np.arange(end - start, dtype=np.int64), len(pad))]
  items = [np.tile(pad, end - start)]
  if exclude is not None:
    lo, hi = exclude.indptr[start], exclude.indptr[end]
    rows.append(np.repeat(np.arange(end - start, dtype=np.int64),
                          np.diff(exclude.indptr[start:end + 1])))
    items.append(exclude.indices[lo:hi])
  return np.stack([np.concatenate(rows), np.concatenate(items)], axis=1).astype(np.int32)


@tf.function(reduce_retracing=True)
def _score_chunk(queries, items_t, masked, k: int, block: int):
  scores = tf.matmul(queries, items_t)
  # In a graph the matmul's buffer is updated in place, so masking costs no extra pass.
  scores = tf.tensor_scatter_nd_update(
      scores, masked, tf.fill(tf.shape(masked)[:1], tf.constant(-np.inf, tf.float32)))
  if not block:
    values, indices = tf.math.top_k(scores, k)
    return scores, values, indices
  # Two-stage exact top-k: the k best items lie in the k blocks with the best maxima (blocks
  # with a strictly larger maximum number fewer than k, and blocks tied at the k-th maximum
  # are taken lowest index first, which holds enough of the tied items with the lowest
  # indices). Candidates keep item-index order, so top_k's tie-break still means the lower
  # item index.
  rows = tf.shape(scores)[0]
  blocks = tf.reshape(scores, [rows, -1, block])
  _, chosen = tf.math.top_k(tf.reduce_max(blocks, axis=2), k)
  chosen = tf.sort(chosen, axis=1)
  candidates = tf.reshape(tf.gather(blocks, chosen, batch_dims=1), [rows, k * block])
  values, position = tf.math.top_k(candidates, k)
  indices = tf.gather(chosen, position // block, batch_dims=1) * block + position % block
  return scores, values, indices


# -- metrics -------------------------------------------------------------------------------


class _UserMetrics:
  """Every evaluated user's metric values, filled a chunk at a time (by the workers; a chunk
  writes only its own users' rows).

  Kept per user (U x (3 |ks| + 1) floats, less than the query embeddings) and summed once at
  the end, so the result is bit-identical whatever the chunk size.
  """

  def __init__(self, ks: tuple[int, ...], depth: int, num_users: int):
    self.ks, self.depth = ks, depth
    self.discount = 1.0 / np.log2(np.arange(depth) + 2.0)
    self.ideal = np.cumsum(self.discount)   # ideal DCG of the first n hits, at n - 1
    self.values = np.zeros((num_users, 3 * len(ks) + 1))   # recall, ndcg, hit per K; RR

  def add(self, start: int, scores: np.ndarray | tf.Tensor, top: np.ndarray, keys: np.ndarray,
          num_items: int, maxima: Optional[np.ndarray] = None) -> None:
    """One chunk: top item indices [c, depth], targets as sorted local keys row * N + item."""
    rows = len(top)
    out = self.values[start:start + rows]
    top_keys = np.arange(rows, dtype=np.int64)[:, None] * num_items + top
    found = np.minimum(np.searchsorted(keys, top_keys), len(keys) - 1)
    hits = (keys[found] == top_keys) & (top < num_items)   # padding columns are no items
    num_targets = np.bincount(keys // num_items, minlength=rows)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * self.discount, axis=1)
    for i, k in enumerate(self.ks):
      at = min(k, self.depth) - 1
      ideal_hits = np.minimum(k, num_targets)
      out[:, 3 * i] = cum_hits[:, at] / ideal_hits
      out[:, 3 * i + 1] = cum_dcg[:, at] / self.ideal[ideal_hits - 1]
      out[:, 3 * i + 2] = cum_hits[:, at] > 0
    # MRR: a target in the top k ranks where it was found; for the others, count the items
    # ahead of the best target over the whole corpus.
    found_any = hits.any(axis=1)
    out[found_any, -1] = 1.0 / (np.argmax(hits[found_any], axis=1) + 1)
    missed = np.flatnonzero(~found_any)
    if len(missed):
      best, best_item = _best_targets(scores, keys, missed, num_items)
      ahead = _count_ahead(scores, missed, best, best_item, maxima)
      out[missed, -1] = 1.0 / (ahead + 1.0)

  def result(self, num_users_skipped: int) -> dict[str, float]:
    means = self.values.mean(axis=0) if len(self.values) else np.zeros(self.values.shape[1])
    out = {}
    for i, k in enumerate(self.ks):
      out[f"recall@{k}"] = float(means[3 * i])
      out[f"ndcg@{k}"] = float(means[3 * i + 1])
      out[f"hit_rate@{k}"] = float(means[3 * i + 2])
    out["mrr"] = float(means[-1])
    out["num_users"] = len(self.values)
    out["num_users_skipped"] = int(num_users_skipped)
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
        return (np.count_nonzero(blocks[reach[:own]] >= b) +
                np.count_nonzero(row[start:j] >= b) + np.count_nonzero(row[j:end] > b) +
                np.count_nonzero(blocks[reach[own + 1:]] > b))
    return np.count_nonzero(row[:j] >= b) + np.count_nonzero(row[j:] > b)

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
