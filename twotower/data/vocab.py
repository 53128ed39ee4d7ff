"""Vocabularies: raw string tokens -> dense integer ids, with OOV buckets.

Layout matches ``tf_keras.layers.StringLookup(mask_token="", num_oov_indices=n)``: id 0 is
padding / missing, ids 1..n are OOV buckets, known tokens follow. The same layout is built
into the exported SavedModel, so training-time ids and serving-time ids cannot disagree.
Building and lookup are hash based (pandas), never a per-token Python loop.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

PAD = 0
# The first OOV bucket: the id an item the towers never trained on reads (ItemTower).
FIRST_OOV = 1


class Vocabulary:
  """Known tokens in frequency order (ties by token), plus padding and OOV ids."""

  def __init__(self, tokens: Iterable[str], num_oov_buckets: int = 1):
    self.tokens = np.asarray(list(tokens), dtype=object)
    if num_oov_buckets < 1:
      raise ValueError("num_oov_buckets must be >= 1")
    self.num_oov_buckets = num_oov_buckets
    self._index = pd.Index(self.tokens)
    if not self._index.is_unique:
      raise ValueError("vocabulary tokens must be unique")

  @property
  def offset(self) -> int:
    """Id of the first known token."""
    return 1 + self.num_oov_buckets

  def __len__(self) -> int:
    """Number of ids, padding and OOV included (the embedding table's row count)."""
    return self.offset + len(self.tokens)

  @classmethod
  def build(cls, values: np.ndarray, num_oov_buckets: int = 1,
            min_count: int = 1) -> "Vocabulary":
    counts = pd.Series(values, dtype=object)
    counts = counts[counts != ""].value_counts(sort=False)
    counts = counts[counts >= min_count]
    # Most frequent first; ties broken by token so that builds are deterministic.
    frame = pd.DataFrame({"token": counts.index.astype(str), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "token"], ascending=[False, True], kind="stable")
    return cls(frame["token"].to_numpy(dtype=object), num_oov_buckets)

  def extend(self, values: np.ndarray, min_count: int = 1) -> "Vocabulary":
    """This vocabulary with the tokens of ``values`` it lacks appended, for a warm start.

    Known tokens keep their ids (a trained embedding row stays its token's row) and tokens
    absent from ``values`` are kept, so ids are never reordered; new tokens follow in
    ``build``'s order (most frequent first, ties by token).
    """
    new = Vocabulary.build(values, self.num_oov_buckets, min_count)
    added = new.tokens[self._index.get_indexer(new.tokens) < 0]
    return Vocabulary(np.concatenate([self.tokens, added]), self.num_oov_buckets)

  def lookup(self, values: np.ndarray) -> np.ndarray:
    """Ids of ``values`` (any shape); '' -> PAD, unknown -> a hashed OOV bucket."""
    values = np.asarray(values, dtype=object)
    flat = values.reshape(-1)
    ids = self._index.get_indexer(flat).astype(np.int64)
    known = ids >= 0
    ids[known] += self.offset
    unknown = ~known
    if unknown.any():
      ids[unknown] = self._oov_ids(flat[unknown])
    ids[flat == ""] = PAD
    return ids.reshape(values.shape).astype(np.int32)

  def _oov_ids(self, values: np.ndarray) -> np.ndarray:
    if self.num_oov_buckets == 1:
      return np.ones(len(values), np.int64)
    import tensorflow as tf  # same hash as StringLookup's OOV buckets
    buckets = tf.strings.to_hash_bucket_fast(values.astype(str), self.num_oov_buckets)
    return 1 + buckets.numpy()

  def token(self, ids: np.ndarray) -> np.ndarray:
    """Inverse of lookup for known ids; padding and OOV ids map to ''."""
    ids = np.asarray(ids)
    out = np.full(ids.shape, "", dtype=object)
    known = ids >= self.offset
    out[known] = self.tokens[ids[known] - self.offset]
    return out

  def save(self, path: str) -> None:
    """One token per line; the first line records the OOV bucket count."""
    bad = [t for t in self.tokens if "\n" in t or "\r" in t]
    if bad:
      raise ValueError(f"token {bad[0]!r} contains a newline and cannot be saved")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(f"#oov_buckets={self.num_oov_buckets}\n")
      for t in self.tokens:
        f.write(t)
        f.write("\n")
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    with open(path, encoding="utf-8") as f:
      header = f.readline().rstrip("\n")
      if not header.startswith("#oov_buckets="):
        raise ValueError(f"{path}: not a twotower vocabulary file (bad first line)")
      tokens = f.read().split("\n")[:-1]
    return cls(tokens, int(header.split("=", 1)[1]))
