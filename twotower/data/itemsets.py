"""Per-user sets of item indices in compressed-sparse-row form.

Used for evaluation targets, exclusions (a user's training items) and history masks; CSR
keeps a million users' sets in two flat arrays instead of a million Python objects.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from twotower.data.keys import pair_keys


class ItemSets(NamedTuple):
  indptr: np.ndarray   # int64 [num_rows + 1]
  indices: np.ndarray  # int64 [nnz]; row r owns indices[indptr[r]:indptr[r+1]]

  @property
  def num_rows(self) -> int:
    return len(self.indptr) - 1

  def row(self, r: int) -> np.ndarray:
    return self.indices[self.indptr[r]:self.indptr[r + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.indptr)

  def keys(self, num_items: int) -> np.ndarray:
    """Every (row, item) as the key row * num_items + item (``data/keys.py``), CSR order."""
    rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), self.lengths())
    return pair_keys(rows, self.indices, num_items)

  @classmethod
  def from_lists(cls, rows: Sequence[Sequence[int] | np.ndarray]) -> "ItemSets":
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = (np.concatenate([np.asarray(r, np.int64) for r in rows])
               if len(rows) and indptr[-1] else np.zeros(0, np.int64))
    return cls(indptr, indices)

  @classmethod
  def from_pairs(cls, rows: np.ndarray, items: np.ndarray, num_rows: int) -> "ItemSets":
    """Groups (row, item) pairs by row, dropping duplicate pairs."""
    rows = np.asarray(rows, np.int64)
    items = np.asarray(items, np.int64)
    order = np.lexsort((items, rows))
    rows, items = rows[order], items[order]
    keep = np.ones(len(rows), bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    rows, items = rows[keep], items[keep]
    indptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return cls(indptr, items)

  def subset(self, row_ids: np.ndarray) -> "ItemSets":
    """The sets of the given rows, in that order."""
    row_ids = np.asarray(row_ids, np.int64)
    starts, ends = self.indptr[row_ids], self.indptr[row_ids + 1]
    lengths = ends - starts
    indptr = np.zeros(len(row_ids) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # Vectorised gather of variable-length slices.
    offsets = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return ItemSets(indptr, self.indices[offsets])
