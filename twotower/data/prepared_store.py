"""A run's prepared data on disk: written once by twotower-train, loaded by every later job.

Reading and preparing the log is the slowest part of a later job at scale (a 10M-row log,
or regenerating synthetic data), and it must give exactly the ids and splits the model was
trained on. So training stores the arrays and the jobs after it (rank, index, export,
evaluate) load them instead. ``<workdir>/prepared/`` holds:

  arrays.npz   events, feature id matrices and the raw item table (strings as UTF-8 bytes
               plus offsets), plain arrays only: loaded with allow_pickle=False
  meta.json    format, dataset name, stats, feature specs, item-table layout, and the
               fingerprint of what the arrays were made from

The vocabularies are the ones training writes into ``vocab/``. The fingerprint is the data
config and each input file's size, mtime and sha256. A later job compares it with the run's
config and the files as they are now, and a difference is a clean error, not a silent
re-prepare: the model, its index and its splits belong to the stored arrays, and a changed
log would give other ids and splits. Size and mtime are compared first; only a changed
mtime costs a hash, so a file that was merely touched or copied is still accepted.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np
from absl import logging

from twotower import fileio
from twotower.config import DataConfig
from twotower.data import features as features_lib
from twotower.data import prepare as prepare_lib
from twotower.data import types
from twotower.data.vocab import Vocabulary

FORMAT = "twotower-prepared-1"
ARRAYS = "arrays.npz"
META = "meta.json"
_EVENT_FIELDS = ("user", "item", "timestamp", "label", "user_start", "history_end", "split")
_INPUT_FIELDS = ("interactions", "user_features", "item_features")
# Where a file was read from does not change what it holds.
_IGNORED_CONFIG = ("cache_dir",)


def _config_fingerprint(config: DataConfig) -> dict:
  values = dataclasses.asdict(config)
  for name in _IGNORED_CONFIG:
    values.pop(name, None)
  return json.loads(json.dumps(values))   # tuples as lists, as read back from JSON


def _file_fingerprint(path: str) -> dict:
  stat = os.stat(path)
  return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
          "sha256": fileio.sha256_file(path)}


def fingerprint(config: DataConfig) -> dict:
  """What the prepared arrays were made from: the data config and every input file."""
  return {"config": _config_fingerprint(config),
          "files": {name: _file_fingerprint(getattr(config, name)) for name in _INPUT_FIELDS
                    if getattr(config, name)}}


def _encode_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Object array of str -> (UTF-8 bytes as uint8, int64 offsets [n + 1])."""
  encoded = [str(v).encode("utf-8") for v in values]
  offsets = np.zeros(len(encoded) + 1, np.int64)
  np.cumsum([len(e) for e in encoded], out=offsets[1:])
  return np.frombuffer(b"".join(encoded), np.uint8), offsets


def _decode_strings(buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  whole = buffer.tobytes()
  out = np.empty(len(offsets) - 1, dtype=object)
  out[:] = [whole[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(),
                                                     offsets[1:].tolist())]
  return out


def _spec_meta(table: features_lib.FeatureTable) -> list[dict]:
  return [{"name": s.name, "kind": s.kind, "max_tokens": s.max_tokens,
           "vocab_size": len(s.vocab)} for s in table.specs]


def save(directory: str, data: prepare_lib.PreparedData, config: DataConfig) -> None:
  """Writes ``directory`` (e.g. ``<workdir>/prepared``) atomically: the arrays of ``data``,
  prepared from ``config``, and their fingerprint. The vocabularies are not repeated here:
  ``data.save_vocab`` writes them."""
  arrays: dict[str, np.ndarray] = {}
  ev = data.events
  for name in _EVENT_FIELDS:
    value = getattr(ev, name)
    if value is not None:
      arrays[f"events/{name}"] = value
  for kind, table in (("user", data.user_features), ("item", data.item_features)):
    for name, matrix in table.values.items():
      arrays[f"{kind}_features/{name}"] = matrix
  item_table = None
  if data.item_table is not None:
    t = data.item_table
    for i, column in enumerate(t.columns.values()):
      arrays[f"item_table/{i}/bytes"], arrays[f"item_table/{i}/offsets"] = _encode_strings(column)
    arrays["item_table/line_numbers"] = np.asarray(t.line_numbers, np.int64)
    item_table = {"path": t.path, "columns": list(t.columns), "kinds": t.kinds,
                  "skipped": int(t.skipped)}
  meta = {"format": FORMAT, "name": data.name, "stats": data.stats,
          "vocab_sizes": {"user": len(data.user_vocab), "item": len(data.item_vocab)},
          "user_features": _spec_meta(data.user_features),
          "item_features": _spec_meta(data.item_features),
          "item_table": item_table, "fingerprint": fingerprint(config)}
  with fileio.atomic_directory(directory) as tmp:
    savez: Any = np.savez   # arrays only, by name (numpy's stubs type **kwds as its options)
    savez(os.path.join(tmp, ARRAYS), **arrays)
    fileio.atomic_write_json(os.path.join(tmp, META), meta)


def _stale(message: str, path: str) -> types.DataError:
  return types.DataError(
      f"{message} since twotower-train prepared this run; its model, splits and vocabularies "
      f"belong to the data as it was: rerun twotower-train, or restore the original",
      path=path)


def check_fingerprint(stored: dict, config: DataConfig, where: str) -> None:
  """DataError when ``config`` or one of its input files differs from what the stored
  arrays were made from (a touched file with the same contents is fine)."""
  now = _config_fingerprint(config)
  changed = sorted(k for k in set(now) | set(stored["config"])
                   if now.get(k) != stored["config"].get(k))
  if changed:
    name = changed[0]
    raise _stale(f"the data config changed (--{name}: {stored['config'].get(name)!r} -> "
                 f"{now.get(name)!r})", where)
  for name in _INPUT_FIELDS:
    path = getattr(config, name)
    if not path:
      continue
    old = stored["files"].get(name)
    if not os.path.exists(path):
      logging.warning("%s no longer exists; using the arrays prepared from it", path)
      continue
    stat = os.stat(path)
    if old is None or stat.st_size != old["bytes"]:
      raise _stale(f"the --{name} file changed (size {old and old['bytes']} -> "
                   f"{stat.st_size} bytes)", path)
    if stat.st_mtime_ns != old["mtime_ns"] and fileio.sha256_file(path) != old["sha256"]:
      raise _stale(f"the --{name} file changed (same size, other contents)", path)


def _specs(kind: str, entries: list[dict], vocab_dir: str) -> list[features_lib.FeatureSpec]:
  specs = []
  for entry in entries:
    vocab = Vocabulary.load(os.path.join(vocab_dir, f"{kind}.{entry['name']}.txt"))
    specs.append(features_lib.FeatureSpec(entry["name"], entry["kind"], vocab,
                                          entry["max_tokens"]))
  return specs


def load(directory: str, vocab_dir: str, config: DataConfig
         ) -> Optional[prepare_lib.PreparedData]:
  """The prepared data stored in ``directory``, checked against ``config`` and its input
  files; None when nothing is stored (a run from before the store: prepare it again)."""
  meta_path = os.path.join(directory, META)
  if not os.path.exists(meta_path):
    return None
  try:
    meta = fileio.read_json(meta_path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise fileio.IntegrityError(f"{meta_path} is corrupted ({e}); rerun twotower-train") from None
  if meta.get("format") != FORMAT:
    raise fileio.IntegrityError(f"{meta_path}: unknown format {meta.get('format')!r}; "
                                f"rerun twotower-train")
  check_fingerprint(meta["fingerprint"], config, directory)
  user_vocab = Vocabulary.load(os.path.join(vocab_dir, "user_id.txt"))
  item_vocab = Vocabulary.load(os.path.join(vocab_dir, "item_id.txt"))
  if (len(user_vocab), len(item_vocab)) != (meta["vocab_sizes"]["user"],
                                            meta["vocab_sizes"]["item"]):
    raise fileio.IntegrityError(f"{vocab_dir} does not match {directory} (other vocabulary "
                                f"sizes); rerun twotower-train")
  with np.load(os.path.join(directory, ARRAYS), allow_pickle=False) as npz:
    arrays = {name: npz[name] for name in npz.files}
  get = lambda name: arrays[f"events/{name}"]
  events = prepare_lib.Events(get("user"), get("item"), get("timestamp"),
                              arrays.get("events/label"), get("user_start"),
                              get("history_end"), get("split"))
  tables = {}
  for kind, key in (("user", "user_id"), ("item", "item_id")):
    specs = _specs(kind, meta[f"{kind}_features"], vocab_dir)
    tables[kind] = features_lib.FeatureTable(
        key, specs, {s.name: arrays[f"{kind}_features/{s.name}"] for s in specs})
  item_table = None
  if meta["item_table"] is not None:
    t = meta["item_table"]
    columns = {name: _decode_strings(arrays[f"item_table/{i}/bytes"],
                                     arrays[f"item_table/{i}/offsets"])
               for i, name in enumerate(t["columns"])}
    item_table = types.Table(t["path"], columns, t["kinds"], arrays["item_table/line_numbers"],
                             t["skipped"])
  logging.info("loaded the prepared data of %s from %s", meta["name"], directory)
  return prepare_lib.PreparedData(meta["name"], user_vocab, item_vocab, tables["user"],
                                  tables["item"], events, meta["stats"], item_table=item_table)
