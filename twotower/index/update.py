"""Keeps an index in step with a retrained corpus: the difference between the corpus an index
was built over and a new one (items added, deleted, moved), applied to the searcher in place
instead of rebuilding it.

Items are matched by id string. An item whose vector moved by no more than ``tolerance``
(cosine distance) keeps its indexed, stale vector: after a retrain nearly every vector moves
a little, and re-upserting all of them would cost a rebuild. A ScaNN searcher is changed
through its pybind mutator (``upsert``: update a row or append one; ``delete``: remove a row,
the last row taking its place), the arrays next to it mirrored the same way, so the saved
index stays row for row what the searcher holds (``storage.load_index`` checks it). The tree
and the hash codebook stay as trained on the old corpus, which is why a large change is
rebuilt instead (``changed_fraction`` against a threshold). A brute-force index has nothing to
keep: it takes the new arrays.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import pandas as pd

from twotower.fileio import IntegrityError
from twotower.index.searcher import BRUTE_FORCE, Index

# Cosine distances below this are float noise (the same vectors encoded twice), never "moved".
_NOISE = 1e-6


@dataclasses.dataclass
class Diff:
  """Rows of the old index and of the new corpus, by what happened to their item."""
  added: np.ndarray          # new rows whose id the old index lacks
  deleted: np.ndarray        # old rows whose id the new corpus lacks
  moved_old: np.ndarray      # old rows of items that moved beyond the tolerance ...
  moved_new: np.ndarray      # ... and their new rows
  kept_old: np.ndarray       # old rows of items kept as indexed (moved by <= tolerance) ...
  kept_new: np.ndarray       # ... and their new rows
  kept_max_distance: float   # the largest cosine distance among the kept (their staleness)
  num_old: int

  @property
  def changed(self) -> int:
    return len(self.added) + len(self.deleted) + len(self.moved_old)

  @property
  def changed_fraction(self) -> float:
    """Rows the update writes or removes, per row of the old index."""
    return self.changed / max(self.num_old, 1)

  def counts(self) -> dict:
    return {"added": len(self.added), "deleted": len(self.deleted),
            "moved": len(self.moved_old), "unchanged": len(self.kept_old)}


def cosine_distance(a: np.ndarray, b: np.ndarray, *, rows_a: Optional[np.ndarray] = None,
                    rows_b: Optional[np.ndarray] = None, chunk: int = 1 << 16) -> np.ndarray:
  """1 - cos(a_i, b_i) per row pair (0 for two zero rows), of ``a[rows_a]`` and ``b[rows_b]``
  when given; float32, a chunk of rows at a time (a million rows in well under a second)."""
  n = len(a) if rows_a is None else len(rows_a)
  out = np.empty(n, np.float32)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    x = np.asarray(a[start:stop] if rows_a is None else a[rows_a[start:stop]], np.float32)
    y = np.asarray(b[start:stop] if rows_b is None else b[rows_b[start:stop]], np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    dots = np.einsum("ij,ij->i", x, y)
    cos = np.divide(dots, norms, out=np.ones_like(dots), where=norms > 0)
    out[start:stop] = np.clip(1.0 - cos, 0.0, 2.0)
  return out


def diff(old_ids: np.ndarray, old_embeddings: np.ndarray, new_ids: np.ndarray,
         new_embeddings: np.ndarray, tolerance: float) -> Diff:
  """What changed between an index's corpus and a new one; ``tolerance``: the cosine distance
  up to which a moved item keeps its indexed vector."""
  new_rows = _positions(np.asarray(new_ids, dtype=object), np.asarray(old_ids, dtype=object))
  common_old = np.flatnonzero(new_rows >= 0)
  common_new = new_rows[common_old]
  present = np.zeros(len(new_ids), bool)
  present[common_new] = True
  dist = cosine_distance(old_embeddings, new_embeddings, rows_a=common_old, rows_b=common_new)
  moved = dist > max(tolerance, _NOISE)
  kept = ~moved
  return Diff(added=np.flatnonzero(~present), deleted=np.flatnonzero(new_rows < 0),
              moved_old=common_old[moved], moved_new=common_new[moved],
              kept_old=common_old[kept], kept_new=common_new[kept],
              kept_max_distance=float(dist[kept].max(initial=0.0)), num_old=len(old_ids))


def _positions(new_ids: np.ndarray, old_ids: np.ndarray) -> np.ndarray:
  """Row of each old id among the new ones (-1: gone). A corpus that only grew at its end
  (a warm-started vocabulary) is matched without hashing."""
  m = len(old_ids)
  if len(new_ids) >= m and np.array_equal(new_ids[:m], old_ids):
    return np.arange(m)
  return pd.Index(new_ids).get_indexer(old_ids)


def apply(index: Index, new_ids: np.ndarray, new_embeddings: np.ndarray, d: Diff,
          batch_size: int = 256) -> Index:
  """The index updated to the new corpus by ``d`` (ScaNN: its searcher mutated in place; the
  tuned knobs kept). Rows of the result follow the searcher: kept and moved items stay where
  they were, added ones fill deleted rows first, then append; leftover deleted rows are
  removed with the last row moving in (ScaNN's delete)."""
  new_ids = np.asarray(new_ids, dtype=object)
  new_embeddings = np.ascontiguousarray(new_embeddings, np.float32)
  if index.kind == BRUTE_FORCE:
    return Index(BRUTE_FORCE, new_embeddings, params=dict(index.params), item_ids=new_ids,
                 build_seconds=index.build_seconds)
  if index.item_ids is None:
    raise ValueError("an index without item ids cannot be updated")
  start = time.perf_counter()
  raw = index.searcher.searcher             # the pybind ScannNumpy: rows, not docids
  reuse = min(len(d.deleted), len(d.added))
  # One upsert: moved rows and reused deleted rows updated in place, the rest appended.
  update_rows = np.concatenate([d.moved_old, d.deleted[:reuse]]).astype(np.int64)
  rows = np.concatenate([update_rows, np.full(len(d.added) - reuse, -1, np.int64)])
  src = np.concatenate([d.moved_new, d.added]).astype(np.int64)
  # Index.upsert mutates the searcher and replaces (never writes into) the arrays it holds,
  # so the old index's memory-mapped rows stay as they were.
  updated = Index(index.kind, index.embeddings, index.searcher, dict(index.params),
                  np.asarray(index.item_ids, dtype=object))
  try:
    updated.upsert(rows, new_embeddings[src], new_ids[src], batch_size)
  except RuntimeError as e:
    raise IntegrityError(f"{e}; rebuild the index") from None
  emb, ids = updated.embeddings, np.asarray(updated.item_ids, dtype=object)
  gone = np.sort(d.deleted[reuse:])[::-1]   # descending: the last row is never one to delete
  if len(gone):
    raw.delete([int(r) for r in gone])
    n = len(emb)
    for r in gone:
      n -= 1
      emb[r], ids[r] = emb[n], ids[n]
    emb, ids = emb[:n], ids[:n]
  if raw.size() != len(emb):
    raise IntegrityError(f"after the update the searcher holds {raw.size()} items, the "
                         f"arrays {len(emb)}; rebuild the index")
  # Staleness is measured from the indexed vectors, so it never accumulates across updates.
  params = dict(index.params, update_tolerance=d.kept_max_distance)
  return Index(index.kind, emb, index.searcher, params, ids,
               build_seconds=time.perf_counter() - start)


def aligned(index: Index, item_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
  """``embeddings`` (rows in ``item_ids`` order) in the index's row order; raises if the two
  corpora hold different items."""
  if index.item_ids is None:
    if len(embeddings) != index.num_items:
      raise IntegrityError(f"the index holds {index.num_items} items, the corpus "
                           f"{len(embeddings)}")
    return np.asarray(embeddings)
  rows = pd.Index(np.asarray(item_ids, dtype=object)).get_indexer(
      np.asarray(index.item_ids, dtype=object))
  if len(item_ids) != index.num_items or (rows < 0).any():
    raise IntegrityError(f"the index holds other items than the corpus ({index.num_items} "
                         f"indexed, {len(item_ids)} in the corpus)")
  return np.asarray(embeddings)[rows]


def check_matches(index: Index, item_ids: np.ndarray, embeddings: np.ndarray) -> None:
  """Raises IntegrityError unless the index holds the corpus's items with its vectors (within
  float noise, or within the staleness an update recorded in ``update_tolerance``)."""
  current = aligned(index, item_ids, embeddings)
  if current.shape != index.embeddings.shape:
    raise IntegrityError(f"the index's vectors have shape {index.embeddings.shape}, the "
                         f"corpus's {current.shape}")
  allowed = index.params.get("update_tolerance")
  if allowed is None:
    ok = np.allclose(current, index.embeddings, atol=1e-4)
  else:
    ok = bool(np.all(cosine_distance(current, index.embeddings) <= allowed + 1e-5))
  if not ok:
    raise IntegrityError("the index was built from other item embeddings than the corpus's")
