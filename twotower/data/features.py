"""Feature specs and the encoding of side-feature tables into dense id matrices.

A user's or item's features become one int32 row per entity, indexed by the entity's id in
its key vocabulary, so a batch's features are a single gather, in-graph. Rows of entities
absent from the table (and the padding / OOV rows) hold PAD: the learned "missing" value.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import pandas as pd

from twotower.data import text, types
from twotower.data.vocab import PAD, Vocabulary
from twotower.errors import ConfigError

SEPARATORS = r"[ |]+"


@dataclasses.dataclass
class FeatureSpec:
  name: str
  kind: str                 # types.TOKEN | types.TOKEN_SEQ | types.TEXT
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


def tokenize_tf(strings, max_tokens: int):
  """In-graph twin of ``tokenize`` for the exports: [B] multi-valued strings -> [B,
  max_tokens] tokens, '' padded (split on runs of spaces and '|', the first max_tokens)."""
  import tensorflow as tf
  clean = tf.strings.strip(tf.strings.regex_replace(strings, SEPARATORS, " "))
  parts = tf.strings.split(clean, " ")
  return parts.to_tensor(default_value="", shape=[None, max_tokens])


def raw_feature_matrix_tf(strings, spec: FeatureSpec):
  """In-graph twin of ``raw_feature_matrix`` for the exports: [B] raw strings of one
  feature -> its raw token matrix (tokenised for token_seq and text)."""
  if spec.kind == types.TOKEN_SEQ:
    return tokenize_tf(strings, spec.max_tokens)
  if spec.kind == types.TEXT:
    return text.tokenize_tf(strings, spec.max_tokens)
  return strings


def raw_feature_matrix(column: np.ndarray, spec: FeatureSpec) -> np.ndarray:
  """Raw strings of one feature column, shaped as the spec's id matrix."""
  if spec.kind == types.TOKEN_SEQ:
    return tokenize(column, spec.max_tokens)
  if spec.kind == types.TEXT:
    return text.tokenize(column, spec.max_tokens)
  return np.asarray(column, dtype=object)


def declare_text(tables: list[Optional[types.Table]], names, what: str) -> None:
  """Marks the ``names`` columns of the user / item tables as text (``--text_features``).

  A name that no table has, or a column that is empty in every row, is a DataError naming
  the file(s) and the column: a typo must not train a model without its text.
  """
  present = [t for t in tables if t is not None]
  for name in names:
    holders = [t for t in present if name in t.columns and name not in ("user_id", "item_id")]
    if not holders:
      files = ", ".join(f"{t.path} ({', '.join(c for c in t.columns)})" for t in present)
      raise types.DataError(
          f"--text_features names column '{name}', which no feature table has; "
          f"the tables are: {files or f'none (pass {what})'}",
          path=" and ".join(t.path for t in present) or None, field=name)
    for table in holders:
      column = np.asarray(table.columns[name], dtype=object)
      if not (pd.Series(column, dtype=object).fillna("").astype(str).str.strip() != "").any():
        raise types.DataError(f"--text_features column is empty in every one of its "
                              f"{len(column)} rows", path=table.path, field=name)
      table.kinds[name] = types.TEXT


def build_specs(table: Optional[types.Table], key: str, *, max_tokens: int,
                num_oov_buckets: int, text_max_tokens: int = 32,
                base: Optional[list[FeatureSpec]] = None) -> list[FeatureSpec]:
  """One spec per feature column of ``table``; with ``base`` (a parent run's specs, for a
  warm start) each feature's vocabulary extends the parent's, and a feature set, kind or
  width that differs from the parent's is a ConfigError naming both."""
  specs = [] if table is None else [
      _new_spec(table, name, max_tokens, text_max_tokens, num_oov_buckets)
      for name in table.columns if name != key]
  if base is None:
    return specs
  entity = key.split("_")[0]
  _check_same_features(entity, base, specs)
  parents = {s.name: s for s in base}
  for spec in specs:
    assert table is not None   # specs come from the table's columns
    raw = raw_feature_matrix(table.columns[spec.name], spec).reshape(-1)
    spec.vocab = parents[spec.name].vocab.extend(raw)
  return specs


def _new_spec(table: types.Table, name: str, max_tokens: int, text_max_tokens: int,
              num_oov_buckets: int) -> FeatureSpec:
  kind = table.kinds.get(name, types.TOKEN)
  width = {types.TOKEN_SEQ: max_tokens, types.TEXT: text_max_tokens}.get(kind, 1)
  spec = FeatureSpec(name, kind, Vocabulary([], num_oov_buckets), width)
  spec.vocab = Vocabulary.build(raw_feature_matrix(table.columns[name], spec).reshape(-1),
                                num_oov_buckets)
  return spec


def _check_same_features(entity: str, parent: list[FeatureSpec],
                         child: list[FeatureSpec]) -> None:
  """A warm start keeps the parent's feature embeddings: same features, kinds, widths."""
  def describe(specs):
    return [f"{s.name} ({s.kind}, {s.max_tokens} tokens)" for s in specs]
  same = [(s.name, s.kind, s.max_tokens) for s in parent] == [
      (s.name, s.kind, s.max_tokens) for s in child]
  if not same:
    raise ConfigError(f"--init_from: the {entity} features changed: the parent run has "
                      f"{describe(parent) or 'none'}, this data has {describe(child) or 'none'}; "
                      f"warm start needs the same {entity} feature columns (and --max_tokens)")


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


@dataclasses.dataclass
class SavedVocabularies:
  """A run's vocabularies as ``PreparedData.save_vocab`` left them (``<workdir>/vocab``):
  what a warm-started run extends."""
  user_vocab: Vocabulary
  item_vocab: Vocabulary
  user_specs: list[FeatureSpec]
  item_specs: list[FeatureSpec]

  @classmethod
  def load(cls, directory: str) -> "SavedVocabularies":
    with open(os.path.join(directory, "features.json")) as f:
      described = json.load(f)
    specs = {kind: [FeatureSpec(d["name"], d["kind"],
                                Vocabulary.load(os.path.join(directory, f"{kind}.{d['name']}.txt")),
                                d["max_tokens"])
                    for d in described[kind]]
             for kind in ("user", "item")}
    return cls(Vocabulary.load(os.path.join(directory, "user_id.txt")),
               Vocabulary.load(os.path.join(directory, "item_id.txt")),
               specs["user"], specs["item"])
