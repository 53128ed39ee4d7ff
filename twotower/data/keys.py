"""Sorted int64 keys ``row * num_items + item``: one (user, item) pair as one number, so
that sets of a million users' pairs are flat arrays that sort, deduplicate and look up.

``unique`` and ``contains`` are written here instead of ``np.unique`` and ``np.isin``:
numpy 2.3+ deduplicates integers by hashing, which on this project's machine took 10.5 s
for 7.2M keys that a sort deduplicates in 0.155 s, and ``np.isin`` (built on it) 10.2 s
for a lookup that a binary search does in 0.114 s (experiments/bench_most_popular.py;
experiments/RESULTS.md, "A million items end to end").
"""
from __future__ import annotations

import numpy as np


def pair_keys(rows: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
  """``rows * num_items + items`` as int64 (broadcasting)."""
  return np.asarray(rows, np.int64) * num_items + np.asarray(items, np.int64)


def unique(keys: np.ndarray) -> np.ndarray:
  """The distinct keys, ascending (np.unique's result, by a sort)."""
  keys = np.sort(np.asarray(keys).ravel())
  if len(keys) < 2:
    return keys
  first = np.empty(len(keys), bool)
  first[0] = True
  np.not_equal(keys[1:], keys[:-1], out=first[1:])
  return keys[first]


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """bool, the shape of ``keys``: whether each is in ``sorted_keys`` (ascending)."""
  keys = np.asarray(keys)
  if len(sorted_keys) == 0:
    return np.zeros(keys.shape, bool)
  pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
  return sorted_keys[pos] == keys
