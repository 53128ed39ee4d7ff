"""Feature specs and the encoding of side-feature tables into dense id matrices.

A user's or item's features become one int32 row per entity, indexed by the entity's id in
its key vocabulary, so a batch's features are a single gather, in-graph. Rows of entities
absent from the table (and the padding / OOV rows) hold PAD: the learned "missing" value.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np
import pandas as pd

from twotower.data import types
from twotower.data.vocab import PAD, Vocabulary

SEPARATORS = r"[ |]+"


@dataclasses.dataclass
class FeatureSpec:
  name: str
  kind: str                 # types.TOKEN | types.TOKEN_SEQ
  vocab: Vocabulary
  max_tokens: int = 1       # width of the id matrix; 1 for TOKEN

  def describe(self) -> dict:
    return {"name": self.name, "kind": self.kind, "max_tokens": self.max_tokens,
            "vocab_size": len(self.vocab), "num_oov_buckets": self.vocab.num_oov_buckets}


@dataclasses.dataclass
class FeatureTable:
  """Encoded side features of one entity kind (users or items)."""
  key: str
  specs: list[FeatureSpec]
  values: dict[str, np.ndarray]   # name -> int32 [rows] (TOKEN) or [rows, max_tokens]


def tokenize(values: np.ndarray, max_tokens: int) -> np.ndarray:
  """Multi-valued strings -> object array [n, max_tokens] of tokens, '' padded."""
  out = np.full((len(values), max_tokens), "", dtype=object)
  if len(values) == 0:
    return out
  exploded = pd.Series(values, dtype=object).str.strip().str.split(SEPARATORS, regex=True)
  exploded = exploded.explode()
  exploded = exploded[exploded.notna() & (exploded != "")]
  position = exploded.groupby(level=0).cumcount().to_numpy()
  keep = position < max_tokens
  out[exploded.index.to_numpy()[keep], position[keep]] = exploded.to_numpy()[keep]
  return out


def raw_feature_matrix(column: np.ndarray, spec: FeatureSpec) -> np.ndarray:
  """Raw strings of one feature column, shaped as the spec's id matrix."""
  if spec.kind == types.TOKEN_SEQ:
    return tokenize(column, spec.max_tokens)
  return np.asarray(column, dtype=object)


def build_specs(table: Optional[types.Table], key: str, *, max_tokens: int,
                num_oov_buckets: int) -> list[FeatureSpec]:
  if table is None:
    return []
  specs = []
  for name, column in table.columns.items():
    if name == key:
      continue
    kind = table.kinds.get(name, types.TOKEN)
    width = max_tokens if kind == types.TOKEN_SEQ else 1
    spec = FeatureSpec(name, kind, Vocabulary([], num_oov_buckets), width)
    raw = raw_feature_matrix(column, spec)
    spec.vocab = Vocabulary.build(raw.reshape(-1), num_oov_buckets)
    specs.append(spec)
  return specs


def encode_table(table: Optional[types.Table], key: str, key_vocab: Vocabulary,
                 specs: list[FeatureSpec]) -> FeatureTable:
  """Id matrices of every feature, one row per id of ``key_vocab``."""
  values: dict[str, np.ndarray] = {}
  if table is None:
    if specs:
      raise ValueError(f"feature specs {[s.name for s in specs]} need a {key} table")
    return FeatureTable(key, specs, values)
  rows = key_vocab.lookup(table.columns[key])
  for spec in specs:
    shape = (len(key_vocab),) if spec.kind == types.TOKEN else (len(key_vocab), spec.max_tokens)
    matrix = np.full(shape, PAD, np.int32)
    ids = spec.vocab.lookup(raw_feature_matrix(table.columns[spec.name], spec))
    known = rows >= key_vocab.offset   # rows whose key is in the vocabulary
    matrix[rows[known]] = ids[known]
    values[spec.name] = matrix
  return FeatureTable(key, specs, values)


def save_specs(path: str, user_specs: list[FeatureSpec], item_specs: list[FeatureSpec]) -> None:
  with open(path, "w") as f:
    json.dump({"user": [s.describe() for s in user_specs],
               "item": [s.describe() for s in item_specs]}, f, indent=2)
