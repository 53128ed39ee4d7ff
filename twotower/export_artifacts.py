"""What a serving export holds: a query SavedModel and an item SavedModel that take raw
strings, the index, the users' defaults and the item table (written by the job
``twotower.jobs.export.export``).

Layout of ``export_dir`` (pinned in docs/design.md, "Artifact layout"):

  query_model/          SavedModel. Inputs are raw strings: ``user_id`` [B], ``history``
                        [B, L'] ('' padded, any L'), one [B] string per user feature
                        (multi-valued ones as the raw space/'|'-separated string; a column
                        whose name is no Python identifier, or a keyword, is an input named
                        as the manifest says: ``input_names``). Signatures:
                        ``serving_default`` (top-k item ids and scores through the ScaNN TF
                        ops, or exact when the index is brute force; [B, min(k, N)], slots
                        ScaNN left empty hold '' and -inf), ``brute_force`` (exact
                        top-k, no custom op in its graph) and ``embed`` (the user embedding).
  item_model/           SavedModel. Inputs are raw strings: ``item_id`` [B] and one [B]
                        string per item feature column (multi-valued ones as the raw
                        space/'|'-separated string, text as free text, '' when missing).
                        Signature ``serving_default``: {"embedding": [B, D]}, the item
                        tower's vector, equal to the index's for a corpus item. An id the
                        vocabulary lacks (a new item) reads the OOV row, as an item without
                        training events does when item id dropout is on (``--text_features``):
                        such an item is embedded from its features and text. Plain TF ops only.
  index/                the serialized pybind ScaNN searcher (absent for brute force)
  item_embeddings.npy   corpus embeddings, corpus order; item_ids.txt: their ids
  index.json            kind, tuned parameters, fingerprint, sha256 of the index files
  user_defaults.npz     per known user: latest features and last L items (unicode, no pickle)
  item_features.jsonl   the item table's raw strings, one JSON object per corpus item in
                        corpus order ({"item_id": ..., column: value or null}); absent when
                        the run had no item table
  manifest.json         package versions, config, signatures, sha256 of every file

Strings become ids in-graph with hash tables built from the training vocabularies, in
``StringLookup``'s layout (0 = missing, then OOV buckets hashed like StringLookup, then
tokens), so serving ids cannot drift from training ids. The ScaNN searcher inside the
SavedModel is rebuilt from the very files the pybind searcher was serialized to, and cached
per process under a name derived from its fingerprint: the first call builds it (hence a
warm-up call), later calls only search. A SavedModel holding ScaNN ops loads wherever
``import scann`` has registered them (``twotower.serving`` always does this first).

The export is written to a temporary sibling directory, fsynced and swapped in with one
rename (``twotower.fileio.atomic_directory``): a reader never sees half an export.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import pandas as pd

from twotower import fileio, topk
from twotower import index as index_lib
from twotower.data import types
from twotower.data.features import raw_feature_matrix_tf
from twotower.data.histories import latest_histories
from twotower.data.vocab import FIRST_OOV, PAD, Vocabulary
from twotower.export_layout import ITEM_FEATURES, MANIFEST, USER_DEFAULTS

__all__ = ["ITEM_FEATURES", "ITEM_INPUTS", "MANIFEST", "QUERY_INPUTS", "USER_DEFAULTS",
           "SCANN_NAMESPACE", "build_item_module", "build_query_module", "default_inputs",
           "input_names", "item_inputs", "lookup_ids", "lookup_table", "right_align",
           "user_defaults", "write_item_features"]

SCANN_NAMESPACE = "Scann"
# The SavedModels' inputs besides the features (whose names avoid these).
QUERY_INPUTS = ("user_id", "history", "k")
ITEM_INPUTS = ("item_id",)


# --------------------------------------------------------------------------- in-graph


def lookup_table(vocab: Vocabulary):
  """A hash table token -> id in the vocabulary's layout (-1 for unknown)."""
  import tensorflow as tf
  tokens = np.asarray(vocab.tokens, dtype=object).astype(str)
  if len(tokens) == 0:
    return None
  init = tf.lookup.KeyValueTensorInitializer(
      tf.constant(tokens, tf.string),
      tf.range(vocab.offset, vocab.offset + len(tokens), dtype=tf.int64))
  return tf.lookup.StaticHashTable(init, default_value=-1)


def lookup_ids(table, num_oov: int, strings, *, oov_to_pad: bool = False):
  """Strings -> int32 ids: '' -> PAD, unknown -> a StringLookup-hashed OOV bucket (or PAD)."""
  import tensorflow as tf
  ids = table.lookup(strings) if table is not None else tf.fill(tf.shape(strings), tf.constant(
      -1, tf.int64))
  if oov_to_pad:
    oov = tf.zeros_like(ids)
  elif num_oov == 1:
    oov = tf.ones_like(ids)
  else:
    oov = 1 + tf.strings.to_hash_bucket_fast(strings, num_oov)
  ids = tf.where(ids < 0, oov, ids)
  ids = tf.where(tf.equal(strings, ""), tf.zeros_like(ids), ids)
  return tf.cast(ids, tf.int32)


def right_align(ids, length: int):
  """[B, L'] ids with PAD anywhere -> [B, L]: the last L non-PAD ids, in order, PAD in front."""
  import tensorflow as tf
  keep = tf.not_equal(ids, PAD)
  from_end = tf.cumsum(tf.cast(keep, tf.int32), axis=1, reverse=True)
  keep = keep & (from_end <= length)
  rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
  where = tf.stack([tf.boolean_mask(rows, keep), tf.boolean_mask(length - from_end, keep)], 1)
  return tf.scatter_nd(where, tf.boolean_mask(ids, keep), [tf.shape(ids)[0], length])


def _feature_ids(spec, table, raw):
  """[B] raw strings of one side feature -> its id matrix, as ``features.encode_table``
  builds it in training: tokenised (token_seq, text), then looked up."""
  return lookup_ids(table, spec.vocab.num_oov_buckets, raw_feature_matrix_tf(raw, spec))


def input_names(specs, reserved: tuple) -> dict[str, str]:
  """Feature column -> its signature input's name. A signature's inputs are keyword
  arguments, so a column that is no Python identifier, or a keyword (MovieLens' item column
  ``class``), gets one: non-word characters as '_', then '_' appended until it is unique."""
  import keyword
  import re
  taken = set(reserved)
  out = {}
  for s in specs:
    name = s.name
    if not name.isidentifier() or keyword.iskeyword(name) or name in taken:
      name = re.sub(r"\W", "_", name, flags=re.ASCII)
      name = name if name[:1].isalpha() else "f_" + name
      while keyword.iskeyword(name) or name in taken:
        name += "_"
    taken.add(name)
    out[s.name] = name
  return out


def _string_inputs(key: str, specs, reserved: tuple) -> dict:
  """The signature's raw string inputs, keyed by column: the entity's id [B] and one [B]
  per feature (named by ``input_names``)."""
  import tensorflow as tf
  spec = {key: tf.TensorSpec([None], tf.string, name=key)}
  for column, name in input_names(specs, reserved).items():
    spec[column] = tf.TensorSpec([None], tf.string, name=name)
  return spec


def _read_scann_assets(directory: str) -> dict:
  """The tensors the ScaNN TF op rebuilds a searcher from, read from pybind's files."""
  def blob(name):
    with open(os.path.join(directory, name), "rb") as f:
      return np.array([f.read()], dtype=object)

  def array(name, dtype):
    path = os.path.join(directory, name)
    return (np.load(path, allow_pickle=False) if os.path.exists(path)
            else np.zeros((), dtype))

  return {"scann_config": blob("scann_config.pb"),
          "serialized_partitioner": blob("serialized_partitioner.pb"),
          "datapoint_to_token": array("datapoint_to_token.npy", np.int32),
          "ah_codebook": blob("ah_codebook.pb"),
          "hashed_dataset": array("hashed_dataset.npy", np.uint8),
          "int8_dataset": array("int8_dataset.npy", np.int8),
          "int8_multipliers": array("int8_multipliers.npy", np.float32),
          "dp_norms": array("dp_norms.npy", np.float32)}


def build_query_module(user_tower, data, history_length: int, index: index_lib.Index,
                       item_ids: np.ndarray, searcher_dir: Optional[str],
                       shared_name: str):
  """A tf.Module with ``embed``, ``top_k`` (ScaNN or exact) and ``brute_force`` functions
  over raw string inputs, plus the signatures to save them under."""
  import tensorflow as tf

  specs = list(data.user_features.specs)
  user_table = lookup_table(data.user_vocab)
  item_table = lookup_table(data.item_vocab)
  feature_tables = {s.name: lookup_table(s.vocab) for s in specs}
  n = index.num_items
  module = tf.Module(name="query_model")
  module.tables = [t for t in [user_table, item_table, *feature_tables.values()] if t]
  module.tower_variables = list(user_tower.variables)
  module.item_ids = tf.Variable(np.asarray(item_ids, dtype=object).astype(str),
                                trainable=False, name="item_ids")
  module.item_embeddings = tf.Variable(index.embeddings, trainable=False,
                                       name="item_embeddings")
  scann = None
  if index.kind == index_lib.SCANN:
    from scann.scann_ops.py import scann_ops
    if searcher_dir is None:
      raise ValueError("a ScaNN index needs its serialized searcher directory")
    assets = _read_scann_assets(searcher_dir)
    module.scann_state = {k: tf.Variable(v, trainable=False, name=k) for k, v in assets.items()}
    scann = scann_ops

  spec = _string_inputs("user_id", specs, QUERY_INPUTS)
  spec["history"] = tf.TensorSpec([None, None], tf.string, name="history")
  k_spec = dict(spec, k=tf.TensorSpec([], tf.int32, name="k"))

  def features(inputs):
    user_ids = lookup_ids(user_table, data.user_vocab.num_oov_buckets, inputs["user_id"])
    # Unknown items carry no signal (their OOV row was never trained): dropped.
    history = lookup_ids(item_table, 1, inputs["history"], oov_to_pad=True)
    out = {"user_id": user_ids, "history": right_align(history, history_length)}
    for s in specs:
      out[s.name] = _feature_ids(s, feature_tables[s.name], inputs[s.name])
    return out

  def embed(inputs):
    return tf.cast(user_tower(features(inputs), training=False), tf.float32)

  def clip_k(k):
    return tf.clip_by_value(k, 0, n)

  # Plain TF ops with no data-dependent Python control flow: nothing for AutoGraph to
  # convert, and its attempt on this closure logged a "could not transform" warning.
  @tf.autograph.experimental.do_not_convert
  def exact(inputs):
    query = embed(inputs)
    scores = tf.matmul(query, module.item_embeddings, transpose_b=True)
    scores, rows = topk.top_k_tf(scores, clip_k(inputs["k"]))   # traced: TF ops only
    return {"item_ids": tf.gather(module.item_ids, rows), "scores": scores}

  def approximate(inputs):
    query = embed(inputs)
    st = module.scann_state
    handle = scann.tensors_to_scann(
        module.item_embeddings, st["scann_config"], st["serialized_partitioner"],
        st["datapoint_to_token"], st["ah_codebook"], st["hashed_dataset"],
        st["int8_dataset"], st["int8_multipliers"], st["dp_norms"], shared_name=shared_name)
    k = clip_k(inputs["k"])
    tuned = index.params["pre_reorder_num_neighbors"]
    depth = tf.maximum(tuned, -(-tuned * k // index.params["tuned_k"]))
    depth = tf.minimum(tf.maximum(depth, k), n)
    rows, scores = scann.scann_search_batched(   # ScaNN reads k <= 0 as "its default"
        handle, query, tf.maximum(k, 1), tf.maximum(depth, 1),
        index.params["leaves_to_search"], False)
    # Fewer than k found (a large k searches only the tuned leaves): pad to width k.
    pad = [[0, 0], [0, tf.maximum(k - tf.shape(rows)[1], 0)]]
    rows = tf.pad(rows, pad)[:, :k]
    scores = tf.pad(scores, pad, constant_values=np.nan)[:, :k]
    found = tf.logical_not(tf.math.is_nan(scores))
    ids = tf.where(found, tf.gather(module.item_ids, rows), tf.constant(""))
    scores = tf.where(found, scores, tf.constant(-np.inf, tf.float32))
    return {"item_ids": ids, "scores": scores}

  module.embed = tf.function(lambda inputs: {"embedding": embed(inputs)},
                             input_signature=[spec])
  module.brute_force = tf.function(exact, input_signature=[k_spec])
  module.top_k = tf.function(approximate if scann else exact, input_signature=[k_spec])
  signatures = {"serving_default": module.top_k.get_concrete_function(),
                "brute_force": module.brute_force.get_concrete_function(),
                "embed": module.embed.get_concrete_function()}
  return module, signatures


def build_item_module(item_tower, data):
  """A tf.Module whose ``embed`` function maps raw item strings to the item tower's vector
  ({"embedding": [B, D]}), plus the signatures to save it under.

  Ids follow the training vocabulary; an id it lacks, or '', becomes ``FIRST_OOV`` (never a
  hashed bucket): the row the item tower gives every item it has no trained row for.
  """
  import tensorflow as tf

  specs = list(data.item_features.specs)
  item_table = lookup_table(data.item_vocab)
  feature_tables = {s.name: lookup_table(s.vocab) for s in specs}
  module = tf.Module(name="item_model")
  module.tables = [t for t in [item_table, *feature_tables.values()] if t]
  module.tower_variables = list(item_tower.variables)

  def embed(inputs):
    ids = lookup_ids(item_table, 1, inputs["item_id"])      # unknown -> 1, '' -> PAD
    features = {"item_id": tf.maximum(ids, FIRST_OOV)}
    for s in specs:
      features[s.name] = _feature_ids(s, feature_tables[s.name], inputs[s.name])
    return {"embedding": tf.cast(item_tower(features, training=False), tf.float32)}

  module.embed = tf.function(tf.autograph.experimental.do_not_convert(embed),
                             input_signature=[_string_inputs("item_id", specs, ITEM_INPUTS)])
  return module, {"serving_default": module.embed.get_concrete_function()}


def item_inputs(specs, table: Optional[types.Table], item_ids) -> dict:
  """Raw item_model inputs of items by id, from the item table ('' where it has no row)."""
  import tensorflow as tf
  item_ids = np.asarray(item_ids, dtype=object)
  out = {"item_id": item_ids.astype(str)}
  if specs:
    assert table is not None, "item features come from an item table"
    rows = _table_rows(table, item_ids)
    for s in specs:
      column = np.asarray(table.columns[s.name], dtype=object)
      out[s.name] = np.where(rows >= 0, column[np.maximum(rows, 0)], "").astype(str)
  return {key: tf.constant(value) for key, value in out.items()}


def _table_rows(table: types.Table, item_ids: np.ndarray) -> np.ndarray:
  """Row of each item id in the item table (-1: none)."""
  return pd.Index(np.asarray(table.columns["item_id"], dtype=object)).get_indexer(
      np.asarray(item_ids, dtype=object))


# --------------------------------------------------------------------------- defaults


def user_defaults(data, history_length: int) -> dict:
  """Per known user: raw latest features and last L items of the whole log (strings)."""
  tokens = np.asarray(data.user_vocab.tokens, dtype=object)
  ids = np.arange(data.user_vocab.offset, len(data.user_vocab), dtype=np.int32)
  history = np.full((len(ids), history_length), "", dtype=object)
  users, items = latest_histories(data, history_length)
  history[users - data.user_vocab.offset] = data.item_vocab.token(items)
  out = {"user_id": tokens.astype(str), "history": history.astype(str)}
  for spec in data.user_features.specs:
    values = data.user_features.values[spec.name][ids]
    raw = spec.vocab.token(values)
    if spec.kind in (types.TOKEN_SEQ, types.TEXT):
      raw = np.array([" ".join(t for t in row if t) for row in raw], dtype=object)
    out[f"feature/{spec.name}"] = raw.astype(str)
  return out


def write_item_features(path: str, item_ids: np.ndarray,
                        table: Optional[types.Table]) -> Optional[list[str]]:
  """Writes each corpus item's raw item-table strings (as in the item file, not the
  tokenised ids the towers read), so that a recommendation can say what it is; null for an
  item the table has no row for. Returns the columns, or None (nothing written) when the
  run has no item table."""
  if table is None:
    return None
  columns = [name for name in table.columns if name != "item_id"]
  rows = _table_rows(table, item_ids)
  values = [np.asarray(table.columns[name], dtype=object) for name in columns]
  # One encoder for every line: json.dumps builds a new one per call when given options,
  # which at a million items was most of this function's time.
  encode = json.JSONEncoder(ensure_ascii=False).encode
  lines = []
  for item, row in zip(item_ids, rows):
    entry: dict[str, Optional[str]] = {"item_id": str(item)}
    entry.update((name, None if row < 0 else str(column[row]))
                 for name, column in zip(columns, values))
    lines.append(encode(entry) + "\n")
  fileio.atomic_write_bytes(path, "".join(lines).encode("utf-8"))
  return columns


def default_inputs(specs, defaults: dict, rows, k: Optional[int] = None) -> dict:
  """Raw signature inputs of known users (their defaults); an empty request if none."""
  import tensorflow as tf
  rows = np.asarray(rows, np.int64)
  if len(rows):
    out = {"user_id": defaults["user_id"][rows], "history": defaults["history"][rows]}
    out.update({s.name: defaults[f"feature/{s.name}"][rows] for s in specs})
  else:
    out = {"user_id": np.array([""]), "history": np.array([[""]])}
    out.update({s.name: np.array([""]) for s in specs})
  out = {key: tf.constant(np.asarray(v).astype(str)) for key, v in out.items()}
  if k is not None:
    out["k"] = tf.constant(k, tf.int32)
  return out
