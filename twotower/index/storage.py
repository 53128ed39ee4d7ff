"""An index on disk: writes an Index into a directory and loads it back, refusing files or
embeddings that differ from what was built, and never unpickling anything.

The directory holds ``searcher/`` (the pybind searcher, serialized with relative paths;
absent for brute force), ``item_embeddings.npy``, ``item_ids.txt`` and ``index.json``
(kind, parameters, the fingerprint of the embeddings and the sha256 of every file).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
from typing import Optional

import numpy as np

from twotower import fileio
from twotower.fileio import IntegrityError
from twotower.index.fingerprints import fingerprint
from twotower.index.searcher import BRUTE_FORCE, SCANN, Index, scann_pybind

INDEX_JSON = "index.json"
EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.txt"
SEARCHER = "searcher"
FORMAT = 1


def save_index(index: Index, directory: str, searcher_dir: str = SEARCHER) -> dict:
  """Writes the index into an existing (empty) directory; returns its index.json."""
  np.save(os.path.join(directory, EMBEDDINGS), np.ascontiguousarray(index.embeddings,
                                                                    np.float32))
  if index.item_ids is not None:
    save_item_ids(os.path.join(directory, ITEM_IDS), index.item_ids)
  if index.searcher is not None:
    path = os.path.join(directory, searcher_dir)
    os.makedirs(path)
    index.searcher.serialize(path, relative_path=True)
  meta = describe(index, searcher_dir if index.searcher is not None else None)
  meta["files"] = fileio.file_hashes(directory)
  fileio.atomic_write_json(os.path.join(directory, INDEX_JSON), meta)
  return meta


def describe(index: Index, searcher_dir: Optional[str] = None) -> dict:
  """index.json without the file hashes."""
  return {"format": FORMAT, "kind": index.kind, "metric": "dot_product",
          "num_items": index.num_items, "dim": int(index.embeddings.shape[1]),
          "fingerprint": index.fingerprint, "params": index.params,
          "searcher_dir": searcher_dir, "scann_version": package_version("scann"),
          "build_seconds": round(index.build_seconds, 3)}


def package_version(package: str) -> Optional[str]:
  """The installed version of a distribution, or None (recorded in index.json and exports)."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def save_item_ids(path: str, ids: np.ndarray) -> None:
  text = "".join(f"{t}\n" for t in ids)
  if any("\n" in t or "\r" in t for t in ids):
    raise ValueError("item ids must not contain newlines")
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write(text)


def load_item_ids(path: str) -> np.ndarray:
  with open(path, encoding="utf-8", newline="\n") as f:
    return np.asarray(f.read().split("\n")[:-1], dtype=object)


def load_index(directory: str, *, verify: bool = True, check_files: bool = True) -> Index:
  """Loads an index written by save_index, checking every file's sha256 (unless the caller
  already did: ``check_files=False``) and that the searcher indexes exactly the embeddings
  next to it (the fingerprint)."""
  fix = "rebuild it with twotower-index (and re-export)"
  meta_path = os.path.join(directory, INDEX_JSON)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: {directory} holds no candidate index; "
                            f"build one with twotower-index --workdir=...")
  try:
    meta = fileio.read_json(meta_path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IntegrityError(f"{meta_path} is corrupted ({e}); {fix}") from None
  if meta.get("format") != FORMAT or meta.get("kind") not in (SCANN, BRUTE_FORCE):
    raise IntegrityError(f"{meta_path}: unknown index format or kind; {fix}")
  files = meta.get("files", {})
  if verify and check_files:
    fileio.verify_files(directory, files, "candidate index", fix)
  searcher_dir = meta.get("searcher_dir")
  if searcher_dir:
    try:
      sdir = fileio.resolve_inside(directory, searcher_dir)
    except ValueError as e:
      raise IntegrityError(f"candidate index: {e}; {fix}") from None
    extra = [name for name in os.listdir(sdir) if f"{searcher_dir}/{name}" not in files]
    if extra:   # e.g. a scann_docids.pkl: never unpickle what we did not write
      raise IntegrityError(f"candidate index: unexpected files in {sdir}: {extra}; {fix}")
  emb_path = os.path.join(directory, EMBEDDINGS)
  try:
    # Memory-mapped: with a ScaNN searcher (which holds its own copy) the matrix is only
    # read for fingerprints and rare exact fallbacks, so its pages stay reclaimable.
    embeddings = np.load(emb_path, mmap_mode="r", allow_pickle=False)
  except FileNotFoundError:
    raise FileNotFoundError(f"candidate index: {emb_path} is missing; {fix}") from None
  except ValueError as e:
    raise IntegrityError(f"candidate index: {emb_path} is unreadable ({e}); {fix}") from None
  if embeddings.shape != (meta["num_items"], meta["dim"]) or embeddings.dtype != np.float32:
    raise IntegrityError(f"candidate index: {emb_path} has shape {embeddings.shape}, "
                         f"index.json says ({meta['num_items']}, {meta['dim']}); {fix}")
  if verify and fingerprint(embeddings) != meta["fingerprint"]:
    raise IntegrityError(f"candidate index: {emb_path} does not match the fingerprint the "
                         f"searcher was built from; {fix}")
  item_ids = None
  if os.path.exists(os.path.join(directory, ITEM_IDS)):
    item_ids = load_item_ids(os.path.join(directory, ITEM_IDS))
    if len(item_ids) != len(embeddings):
      raise IntegrityError(f"candidate index: {len(item_ids)} item ids for "
                           f"{len(embeddings)} embeddings; {fix}")
  searcher = None
  if meta["kind"] == SCANN:
    sdir = os.path.join(directory, searcher_dir)
    if verify and os.path.exists(os.path.join(sdir, "dataset.npy")):
      data = np.load(os.path.join(sdir, "dataset.npy"), allow_pickle=False)
      if fingerprint(data) != meta["fingerprint"]:
        raise IntegrityError(f"candidate index: the searcher in {sdir} was built from other "
                             f"embeddings than {emb_path}; {fix}")
    searcher = _load_searcher(sdir, fix)
    if searcher.size() != len(embeddings):
      raise IntegrityError(f"candidate index: the searcher holds {searcher.size()} items, "
                           f"the embeddings {len(embeddings)}; {fix}")
  return Index(meta["kind"], embeddings, searcher, dict(meta["params"]), item_ids,
               build_seconds=meta.get("build_seconds", 0.0))


def _load_searcher(directory: str, fix: str):
  """The pybind searcher, loaded from its assets file only (scann's own loader would
  unpickle a docids file if one were there)."""
  pybind = scann_pybind()
  assets = os.path.join(directory, "scann_assets.pbtxt")
  if not os.path.isfile(assets):
    raise FileNotFoundError(f"candidate index: {assets} is missing; {fix}")
  with open(assets) as f:
    text = f.read()
  for asset in re.findall(r'asset_path\s*:\s*"([^"]*)"', text):
    try:   # the assets file is data too: its paths must stay inside the searcher
      fileio.resolve_inside(directory, asset)
    except ValueError as e:
      raise IntegrityError(f"candidate index: {assets}: {e}; {fix}") from None
  try:   # relative asset paths resolve against ``directory``
    return pybind.ScannSearcher(pybind.scann_pybind.ScannNumpy(directory, text))
  except Exception as e:  # pylint: disable=broad-except
    raise IntegrityError(f"candidate index: ScaNN cannot load {directory} ({e}); {fix}") from e


