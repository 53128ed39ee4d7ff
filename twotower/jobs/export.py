"""The twotower-export job: a trained and indexed workdir -> a serving export directory.

What goes into an export (the raw-string query and item SavedModels, per-user defaults, the
item table) is built by ``twotower.export_artifacts``; this job loads the run, checks its
index against the trained item tower, checks that each SavedModel reproduces its tower on
raw strings (known users; corpus items, cold ones among them), writes everything into a
temporary directory with a manifest (package versions, config, signatures, sha256 of every
file) and swaps it in atomically.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
from typing import Callable, Optional, Sequence

import numpy as np
from absl import logging

import twotower
from twotower import export_artifacts as export_lib
from twotower import fileio
from twotower import index as index_lib
from twotower.data import types
from twotower.data.histories import latest_histories
from twotower.export_layout import (
  FORMAT,
  INDEX_DIR,
  ITEM_FEATURES,
  ITEM_MODEL,
  MANIFEST,
  QUERY_MODEL,
  USER_DEFAULTS,
)
from twotower.index import update as index_update
from twotower.model.encoding import Encoder
from twotower.training import ranking_run as ranking_lib
from twotower.workdir import TrainedRun, Workdir, load_trained

_PACKAGES = ("tensorflow", "tf_keras", "tensorflow-recommenders", "scann", "numpy", "pandas",
             "absl-py")


def _versions() -> dict:
  out: dict[str, Optional[str]] = {"python": platform.python_version(),
                                   "twotower": twotower.__version__}
  for package in _PACKAGES:
    out[package] = index_lib.package_version(package)
  return out


def _shared_name(index_meta: dict) -> str:
  """Process-wide cache key of the in-graph searcher: a function of the index files."""
  digest = hashlib.sha256(json.dumps(index_meta["files"], sort_keys=True).encode())
  return f"twotower_scann_{digest.hexdigest()[:32]}"


def _lineage(wd: Workdir) -> dict:
  """The run's data time range and, for a warm start, its parent run (from metrics.json)."""
  metrics = fileio.read_json(wd.metrics) if os.path.exists(wd.metrics) else {}
  return {"data_time_range": metrics.get("data_time_range"), "parent": metrics.get("parent")}


def export(workdir: str, export_dir: Optional[str] = None, *,
           include_ranking: Optional[bool] = None,
           extra_writers: Sequence[Callable[[TrainedRun, str], object]] = (),
           run: Optional[TrainedRun] = None) -> str:
  """Writes the serving export of a trained and indexed workdir; returns its path.

  ``include_ranking``: add the ranking head's SavedModel (``ranking_model/``, which
  ``Recommender.load`` then uses to re-rank); None: whenever the workdir has a trained head.
  ``extra_writers`` are called as ``writer(run, dir)`` inside the temporary export directory
  before the manifest, so their files are swapped in atomically and fingerprinted with the
  rest. ``run``: this workdir's already loaded ``TrainedRun`` (the pipeline's).
  """
  wd = Workdir(workdir)
  has_head = ranking_lib.has_ranking_head(workdir)
  if include_ranking and not has_head:
    raise FileNotFoundError(f"{workdir} holds no trained ranking head; run twotower-rank "
                            f"--workdir={workdir} first, or export without it")
  include_ranking = has_head if include_ranking is None else include_ranking
  export_dir = os.path.abspath(export_dir or wd.export)
  if not os.path.exists(os.path.join(wd.index, index_lib.INDEX_JSON)):
    raise FileNotFoundError(
        f"{wd.index} holds no candidate index: run twotower-index --workdir={workdir} "
        f"before twotower-export")
  run = run or load_trained(workdir)
  index = index_lib.load_index(wd.index)
  encoder = Encoder(run.model, run.data)
  corpus = encoder.items()
  try:   # by item id: an updated index (--update_from) holds its rows in its own order
    index_update.check_matches(index, run.data.item_vocab.tokens, corpus)
  except index_lib.IntegrityError as e:
    raise index_lib.IntegrityError(
        f"{wd.index} does not index the trained model's items and embeddings ({e}; was the "
        f"model retrained?); rerun twotower-index --workdir={workdir}") from None
  history_length = run.config.data.history_length
  defaults = export_lib.user_defaults(run.data, history_length)
  # Reference embeddings of a few known users through the training-time path (this also
  # builds the user tower, whose restored weights are created on first call).
  users, history = latest_histories(run.data, history_length)
  check = np.linspace(0, len(users) - 1, min(len(users), 16)).astype(int)
  expected = encoder.users(users[check], history[check])
  check_rows = users[check] - run.data.user_vocab.offset

  with fileio.atomic_directory(export_dir) as tmp:
    index_meta = _copy_index(wd.index, tmp)
    np.savez(os.path.join(tmp, USER_DEFAULTS), **defaults)
    item_columns = export_lib.write_item_features(os.path.join(tmp, ITEM_FEATURES),
                                       (run.data.item_vocab.tokens if index.item_ids is None
                                        else index.item_ids), run.item_table)
    _save_query_model(run, index, index_meta, os.path.join(tmp, INDEX_DIR),
                      os.path.join(tmp, QUERY_MODEL), history_length, defaults,
                      check_rows, expected)
    _save_item_model(run, os.path.join(tmp, ITEM_MODEL), corpus)
    writers = list(extra_writers)
    if include_ranking:
      writers.insert(0, lambda run_, out: ranking_lib.export_ranking_model(workdir, out, run_))
    for writer in writers:
      writer(run, tmp)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": json.loads(run.config.to_json()),
        "workdir": os.path.abspath(workdir),
        **_lineage(wd),
        "index": {k: index_meta[k] for k in ("kind", "metric", "num_items", "dim",
                                             "fingerprint", "params", "searcher_dir")},
        "history_length": history_length,
        "user_features": _described(run.data.user_features.specs, export_lib.QUERY_INPUTS),
        "item_features": ({"path": ITEM_FEATURES, "columns": item_columns}
                          if item_columns is not None else None),
        "query_model": {
            "path": QUERY_MODEL,
            "requires": (["tensorflow", "scann"] if index.kind == index_lib.SCANN
                         else ["tensorflow"]),
            "signatures": {
                "serving_default": ("top-k item ids and scores"
                                    + (" (ScaNN)" if index.kind == index_lib.SCANN
                                       else " (exact)")),
                "brute_force": "exact top-k item ids and scores",
                "embed": "user embedding"},
            "inputs": {"user_id": "string [B]", "history": "string [B, L] ('' padded)",
                       **_feature_inputs(run.data.user_features.specs,
                                         export_lib.QUERY_INPUTS),
                       "k": "int32 scalar (serving_default, brute_force)"},
            "shared_name": _shared_name(index_meta)},
        "item_model": {
            "path": ITEM_MODEL,
            "requires": ["tensorflow"],
            "signatures": {"serving_default": "item embedding [B, D] (\"embedding\")"},
            "inputs": {"item_id": "string [B] (an id the run does not know: a new item, "
                                  "embedded from its features)",
                       **_feature_inputs(run.data.item_features.specs,
                                         export_lib.ITEM_INPUTS)},
            "features": _described(run.data.item_features.specs, export_lib.ITEM_INPUTS)},
        "ranking_model": ({"path": ranking_lib.SAVED_MODEL_DIR, "requires": ["tensorflow"],
                           "signatures": {"serving_default": "scores of candidate item ids"}}
                          if include_ranking else None),
        "files": {rel: {"sha256": digest,
                        "bytes": os.path.getsize(os.path.join(tmp, *rel.split("/")))}
                  for rel, digest in fileio.file_hashes(tmp).items()},
    }
    fileio.atomic_write_json(os.path.join(tmp, MANIFEST), manifest)
  logging.info("exported %s (%s index over %d items)", export_dir, index.kind, index.num_items)
  return export_dir


def _feature_inputs(specs, reserved: tuple) -> dict:
  """A SavedModel's feature inputs as the manifest describes them, by input name."""
  names = export_lib.input_names(specs, reserved)
  return {names[s.name]: "string [B]" + {types.TOKEN_SEQ: " (space/'|'-separated tokens)",
                                         types.TEXT: " (free text)"}.get(s.kind, "")
          + ("" if names[s.name] == s.name else f" (column {s.name})")
          for s in specs}


def _described(specs, reserved: tuple) -> list[dict]:
  """Each feature's spec, with the name of its SavedModel input ("input")."""
  names = export_lib.input_names(specs, reserved)
  return [dict(s.describe(), input=names[s.name]) for s in specs]


def _copy_index(index_dir: str, tmp: str) -> dict:
  """Copies the workdir's index into the export (searcher under index/), byte for byte."""
  meta = fileio.read_json(os.path.join(index_dir, index_lib.INDEX_JSON))
  files = {}
  for rel, digest in meta["files"].items():
    parts = rel.split("/")
    if meta.get("searcher_dir") and parts[0] == meta["searcher_dir"]:
      parts = [INDEX_DIR] + parts[1:]
    dst = os.path.join(tmp, *parts)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(index_dir, *rel.split("/")), dst)
    files["/".join(parts)] = digest
  meta["files"] = files
  if meta.get("searcher_dir"):
    meta["searcher_dir"] = INDEX_DIR
  fileio.atomic_write_json(os.path.join(tmp, index_lib.INDEX_JSON), meta)
  fileio.verify_files(tmp, files, "export", "rerun twotower-export")
  return meta


def _save_query_model(run, index, index_meta, searcher_dir, path, history_length, defaults,
                      check_rows, expected):
  import tensorflow as tf
  module, signatures = export_lib.build_query_module(
      run.model.user_tower, run.data, history_length, index,
      index_lib.load_item_ids(os.path.join(os.path.dirname(path), index_lib.ITEM_IDS)),
      searcher_dir if index.kind == index_lib.SCANN else None, _shared_name(index_meta))
  specs = run.data.user_features.specs
  # The raw-string graph must reproduce the training-time embeddings of known users.
  if len(check_rows):
    got = module.embed(export_lib.default_inputs(specs, defaults, check_rows))["embedding"].numpy()
    if not np.allclose(got, expected, atol=1e-5):
      raise AssertionError("the exported query model disagrees with the trained user tower "
                           f"(max |diff| {np.abs(got - expected).max():.3g})")
  # Warm-up: traces every signature and, for ScaNN, builds the in-graph searcher once.
  sample = export_lib.default_inputs(specs, defaults, check_rows[:1], k=min(10, index.num_items))
  for name in ("top_k", "brute_force"):
    out = getattr(module, name)(sample)
    if not np.isfinite(out["scores"].numpy()).all():
      raise ValueError(f"the exported {name} function returned non-finite scores")
  tf.saved_model.save(module, path, signatures=signatures,
                      options=tf.saved_model.SaveOptions(namespace_whitelist=[export_lib.SCANN_NAMESPACE]))


def _save_item_model(run, path, corpus: np.ndarray) -> None:
  """Saves the item SavedModel after checking it on raw strings: a spread of corpus items
  and the first cold ones (no trained id row: they read the OOV row) must get the vectors
  the trained item tower gave them (``corpus``, the index's)."""
  import tensorflow as tf
  tower, data = run.model.item_tower, run.data
  module, signatures = export_lib.build_item_module(tower, data)
  n = data.num_items
  check = np.linspace(0, n - 1, min(n, 16)).astype(int)
  if tower.trained_ids is not None:
    cold = np.flatnonzero(~tower.trained_ids.numpy()[data.item_vocab.offset:])
    check = np.union1d(check, cold[:16])
  inputs = export_lib.item_inputs(data.item_features.specs, run.item_table,
                                  data.item_vocab.tokens[check])
  got = module.embed(inputs)["embedding"].numpy()
  if not np.allclose(got, corpus[check], atol=1e-5):
    raise AssertionError("the exported item model disagrees with the trained item tower "
                         f"(max |diff| {np.abs(got - corpus[check]).max():.3g})")
  tf.saved_model.save(module, path, signatures=signatures)
