"""The one exact top-k: every item scored by dot product, excluded items never ranked, equal
scores to the lower item index (the protocol of twotower.evaluate).

Evaluation, mining, the index's brute force, its recall measurement, serving's exclusions
and the export's brute-force signature all rank with this module, so they agree on every
candidate. Queries are scored in chunks that bound the scores held at once; on CPU with
numpy (its BLAS multiplies these shapes about twice as fast as tf.matmul, and exclusions
are set in place), chunks split between worker threads with a share of the cores each; on
an accelerator with TensorFlow, where the scores are. The TensorFlow twin ``top_k_tf`` is
also what the exported SavedModel traces, so a serving graph needs no twotower code.
Above ``_MIN_BLOCKS_PER_K * k`` blocks of items the top-k is two-stage: block maxima first,
then the k best blocks, which is exact (see ``top_k_tf``).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from typing import Callable, Optional, overload

import numpy as np
import tensorflow as tf
import threadpoolctl

from twotower import cpus as cpus_lib
from twotower.data.itemsets import ItemSets

# Most scores held at once by default: 256 MB of float32; for a 1M-item corpus, two workers
# of 33 users each on two cores. Fewer users per matmul re-read the corpus for less work
# (experiments/RESULTS.md, "Exact evaluation and input at scale").
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 26

# Items per block in the two-stage top-k; a corpus under _MIN_BLOCKS_PER_K * k blocks takes
# a plain top_k instead (blocking only pays when the k best blocks are a small fraction).
_BLOCK = 256
_MIN_BLOCKS_PER_K = 8
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


Consume = Callable[[int, "np.ndarray | tf.Tensor", "np.ndarray | tf.Tensor",
                    "np.ndarray | tf.Tensor", Optional[np.ndarray]], None]


# -- public API ----------------------------------------------------------------------------


class Corpus:
  """Item embeddings laid out once for many exact searches (an index, a server).

  A search over a bare array lays the corpus out (a transposed, padded copy) per call; an
  index answering one query at a time keeps the layout instead, at most one per block size.
  """

  def __init__(self, item_embeddings: np.ndarray):
    self.items = check_items(item_embeddings)
    self._layouts: dict[int, _Corpus] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.items)

  def layout(self, depth: int) -> _Corpus:
    block = _block_size(len(self.items), depth)
    with self._lock:
      if block not in self._layouts:
        self._layouts[block] = _corpus(self.items, depth)
      return dataclasses.replace(self._layouts[block], depth=depth)


def top_k_items(query_embeddings: np.ndarray,
                item_embeddings: np.ndarray | Corpus,
                k: int,
                exclude: ItemSets | None = None,
                max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS
                ) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k items of every query, best first, equal scores in item-index order.

  ``exclude`` (one row of item indices per query) are never ranked. Evaluation scores its
  metrics through the same chunks (``for_each_chunk``), so serving, mining and the index
  see the candidates the metrics were measured on.

  Returns:
    (indices int64 [U, k], scores float32 [U, k]); where fewer than k items are left (a small
    corpus, or everything else excluded) the remaining slots hold index -1 and score -inf.
  """
  corpus = item_embeddings if isinstance(item_embeddings, Corpus) else None
  items = corpus.items if corpus is not None else check_items(item_embeddings)
  queries = check_queries(query_embeddings, items)
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  exclude = check_sets(exclude, len(queries), len(items), "exclude")
  indices = np.full((len(queries), k), -1, np.int64)
  scores = np.full((len(queries), k), -np.inf, np.float32)
  depth = min(k, len(items))

  def consume(start, _, values, top, __):
    values, top = np.asarray(values), np.asarray(top)
    end = start + len(top)
    scores[start:end, :depth] = values
    indices[start:end, :depth] = np.where(values == -np.inf, -1, top)

  layout = corpus.layout(depth) if corpus is not None else _corpus(items, depth)
  for_each_chunk(queries, layout, exclude, max_chunk_elements, False, consume)
  return indices, scores


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


def check_items(item_embeddings) -> np.ndarray:
  items = np.asarray(item_embeddings, np.float32)
  if items.ndim != 2:
    raise ValueError(f"item embeddings must be [N, D], got shape {items.shape}")
  if len(items) == 0:
    raise ValueError("the item corpus is empty")
  return items


def check_queries(query_embeddings, items: np.ndarray) -> np.ndarray:
  queries = np.asarray(query_embeddings, np.float32)
  if queries.ndim != 2 or queries.shape[1] != items.shape[1]:
    raise ValueError(f"query and item embeddings must be [U, D] and [N, D] with the same D, "
                     f"got {queries.shape} and {items.shape}")
  return queries


@overload
def check_sets(sets: ItemSets, num_rows: int, num_items: int, name: str) -> ItemSets: ...
@overload
def check_sets(sets: None, num_rows: int, num_items: int, name: str) -> None: ...
def check_sets(sets: ItemSets | None, num_rows: int, num_items: int,
               name: str) -> ItemSets | None:
  """Row sets of item indices as int64 ItemSets, one row per query, indices in the corpus."""
  if sets is None:
    return None
  sets = ItemSets(np.asarray(sets.indptr, np.int64), np.asarray(sets.indices, np.int64))
  if sets.num_rows != num_rows:
    raise ValueError(f"{name} has {sets.num_rows} rows but there are {num_rows} queries")
  if len(sets.indices) and (sets.indices.min() < 0 or sets.indices.max() >= num_items):
    raise ValueError(f"{name} holds item indices outside [0, {num_items})")
  return sets


def _block_size(num_items: int, k: int) -> int:
  """Block size of the two-stage top-k, or 0 for a plain top_k over the chunk."""
  return _BLOCK if -(-num_items // _BLOCK) >= _MIN_BLOCKS_PER_K * k else 0


def for_each_chunk(queries: np.ndarray, corpus: _Corpus, exclude: ItemSets | None,
                   max_chunk_elements: int, progress: bool, consume: Consume) -> None:
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
      assert buffer is not None   # a numpy worker always has one
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

  The numpy twin of ``top_k_tf``, two-stage when ``block``; numpy because on CPU it
  and numpy's matmul beat TensorFlow (module docstring). NaN scores (from
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
  chosen = _largest(maxima, k)   # see top_k_tf for why this is exact
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
  values, indices = top_k_tf(scores, k, block)
  return scores, values, indices


def top_k_tf(scores, k, block: int = 0):
  """(values, indices) [c, k] of the best scores per row, equal scores lower index first.

  The TensorFlow twin of ``_top_k``: evaluation on an accelerator runs it, and the export
  traces it into the SavedModel's brute-force signature (``k`` may then be a tensor), whose
  graph must run with TensorFlow alone. Two-stage when ``block`` (a Python int).
  """
  if not block:
    return tf.math.top_k(scores, k)
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
  return values, indices
