"""Candidate generation: item embeddings -> a tuned ScaNN searcher (or brute force), on disk.

``build_searcher`` works on raw arrays: it builds a ScaNN tree + asymmetric-hashing searcher
(dot product, anisotropic quantization, exact float32 reordering) sized from the corpus, then
tunes the search-time knobs (leaves searched, reordering depth) on real queries until
recall@k against the exact top-k reaches a target. Small corpora, and anyone who asks, get
exact brute force instead: below ~20k items a matmul is as fast as an index and never wrong.

``build_index`` does this for a trained workdir and writes ``<workdir>/index/``:
``searcher/`` (the pybind searcher, serialized with relative paths; absent for brute force),
``item_embeddings.npy``, ``item_ids.txt`` and ``index.json`` (kind, parameters, the
fingerprint of the embeddings and the sha256 of every file). ``load_index`` refuses an index
whose files or embeddings do not match what was built, and never unpickles anything.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
import time
from typing import Iterator, Optional

import numpy as np
from absl import logging

from twotower import fileio

BRUTE_FORCE = "brute_force"
SCANN = "scann"
INDEX_JSON = "index.json"
EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.txt"
SEARCHER = "searcher"
FORMAT = 1


class IntegrityError(ValueError):
  """An artifact on disk is not what was written: corrupted, edited or mismatched."""


# --------------------------------------------------------------------------- files


def fingerprint(embeddings: np.ndarray) -> str:
  """sha256 of the float32 embedding bytes: ties an index to the vectors it indexes."""
  return hashlib.sha256(np.ascontiguousarray(embeddings, np.float32).data).hexdigest()


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def file_hashes(root: str) -> dict[str, str]:
  """sha256 of every file under ``root``, keyed by '/'-separated relative path."""
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      out[os.path.relpath(path, root).replace(os.sep, "/")] = sha256_file(path)
  return dict(sorted(out.items()))


def verify_files(root: str, expected: dict[str, str], what: str, fix: str) -> None:
  """Raises FileNotFoundError / IntegrityError naming the first file that does not match."""
  for rel, digest in expected.items():
    try:
      path = fileio.resolve_inside(root, rel)
    except ValueError as e:
      raise IntegrityError(f"{what}: {e}; {fix}") from None
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{what}: {path} is missing; {fix}")
    if sha256_file(path) != digest:
      raise IntegrityError(f"{what}: {path} is corrupted (sha256 differs from the one "
                           f"recorded when it was written); {fix}")


def save_item_ids(path: str, ids: np.ndarray) -> None:
  text = "".join(f"{t}\n" for t in ids)
  if any("\n" in t or "\r" in t for t in ids):
    raise ValueError("item ids must not contain newlines")
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write(text)


def load_item_ids(path: str) -> np.ndarray:
  with open(path, encoding="utf-8", newline="\n") as f:
    return np.asarray(f.read().split("\n")[:-1], dtype=object)


def _umask() -> int:
  """The process umask, read without os.umask (which would briefly change it for every
  thread)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  return 0o022


def _fsync_tree(root: str) -> None:
  """fsyncs every file and directory under root, giving them the usual umask modes
  (temporary files are created private)."""
  mask = _umask()
  for directory, _, names in os.walk(root):
    os.chmod(directory, 0o777 & ~mask)
    for name in names:
      path = os.path.join(directory, name)
      os.chmod(path, 0o666 & ~mask)
      with open(path, "rb") as f:
        os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _recover(parent: str, name: str) -> None:
  """Cleans up after an interrupted atomic_directory: dead writers' temporaries go, and a
  target that was moved aside but never replaced is put back."""
  target = os.path.join(parent, name)
  for entry in sorted(os.listdir(parent)):
    path = os.path.join(parent, entry)
    if entry.startswith(f".{name}.tmp-"):
      pid = entry[len(f".{name}.tmp-"):].split("-", 1)[0]
      if pid.isdigit() and not _pid_alive(int(pid)):
        shutil.rmtree(path, ignore_errors=True)
    elif entry.startswith(f".{name}.old-"):
      if not os.path.exists(target):
        os.rename(path, target)
        logging.warning("restored %s from an interrupted replacement", target)
      else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str) -> Iterator[str]:
  """Yields a temporary directory that replaces ``target`` only once it is complete.

  The contents are fsynced, then swapped in with one atomic rename (an exchange where the
  kernel has one), so a reader sees the old directory or the new one, and an interrupted
  write leaves the old one in place. Leftovers of a killed writer are removed next time.
  """
  target = os.path.abspath(target)
  parent, name = os.path.dirname(target), os.path.basename(target)
  os.makedirs(parent, exist_ok=True)
  _recover(parent, name)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-{os.getpid()}-")
  try:
    yield tmp
    _fsync_tree(tmp)
    if not os.path.exists(target):
      os.rename(tmp, target)
    elif os.path.isdir(target) and _exchange(tmp, target):
      shutil.rmtree(tmp)   # now holds the old contents
    else:
      old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
      os.rmdir(old)
      os.rename(target, old)
      os.rename(tmp, target)
      shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(parent)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# --------------------------------------------------------------------------- search


def exact_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int,
                exclude: Optional[list] = None,
                chunk_elements: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k by dot product: rows [B, k] (int64) and scores, best first.

  Ties go to the lower row (as ``tf.math.top_k`` breaks them), so numpy and the exported
  brute-force signature return identical ids. ``exclude[b]`` (row indices) never appear.
  """
  queries = np.atleast_2d(np.asarray(queries, np.float32))
  n = len(embeddings)
  k = max(0, min(k, n))
  rows = np.zeros((len(queries), k), np.int64)
  scores = np.zeros((len(queries), k), np.float32)
  step = max(1, chunk_elements // max(n, 1))
  for start in range(0, len(queries), step):
    block = queries[start:start + step] @ embeddings.T
    if exclude is not None:
      for b in range(len(block)):
        ex = exclude[start + b]
        if len(ex):
          block[b, ex] = -np.inf
    if k == 0:
      continue
    if k < n:
      part = np.argpartition(-block, k - 1, axis=1)[:, :k]
      kth = np.take_along_axis(block, part, 1).min(axis=1, keepdims=True)
      cand_r, cand_c = np.nonzero(block >= kth)   # ties at the cut are all considered
    else:
      cand_r, cand_c = np.nonzero(np.ones_like(block, bool))
    cand_s = block[cand_r, cand_c]
    order = np.lexsort((cand_c, -cand_s, cand_r))
    cand_r, cand_c, cand_s = cand_r[order], cand_c[order], cand_s[order]
    first = np.searchsorted(cand_r, np.arange(len(block)))
    pick = first[:, None] + np.arange(k)[None, :]
    rows[start:start + len(block)] = cand_c[pick]
    scores[start:start + len(block)] = cand_s[pick]
  return rows, scores


@dataclasses.dataclass
class Index:
  """Item embeddings plus, for kind 'scann', a pybind ScaNN searcher and its tuned knobs."""
  kind: str
  embeddings: np.ndarray
  searcher: object = None                    # scann_ops_pybind.ScannSearcher or None
  params: dict = dataclasses.field(default_factory=dict)
  item_ids: Optional[np.ndarray] = None
  tuning: list = dataclasses.field(default_factory=list)
  build_seconds: float = 0.0

  @property
  def num_items(self) -> int:
    return len(self.embeddings)

  @property
  def fingerprint(self) -> str:
    return fingerprint(self.embeddings)

  def pre_reorder_for(self, k: int) -> int:
    """Reordering depth for a final k: the tuned depth, scaled with k beyond the tuned k."""
    tuned = self.params["pre_reorder_num_neighbors"]
    depth = max(tuned, math.ceil(tuned * k / self.params["tuned_k"]))
    return int(min(max(depth, k), self.num_items))

  def search(self, queries: np.ndarray, k: int, *, exact: bool = False,
             parallel: Optional[bool] = None, leaves_to_search: Optional[int] = None,
             pre_reorder_num_neighbors: Optional[int] = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows [B, k] (int64, -1 where fewer were found) and dot-product scores."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    k = int(min(k, self.num_items))
    if self.searcher is None or exact:
      return exact_top_k(queries, self.embeddings, k)
    leaves = leaves_to_search or self.params["leaves_to_search"]
    pre = pre_reorder_num_neighbors or self.pre_reorder_for(k)
    if parallel is None:
      parallel = len(queries) >= 64
    search = (self.searcher.search_batched_parallel if parallel
              else self.searcher.search_batched)
    rows, scores = search(queries, k, pre, leaves)
    rows = rows.astype(np.int64)
    missing = np.isnan(scores)
    if missing.any():
      rows[missing] = -1
      scores = np.where(missing, -np.inf, scores).astype(np.float32)
    return rows, scores

  def save(self, directory: str, searcher_dir: str = SEARCHER) -> dict:
    """Writes the index into an existing (empty) directory; returns its index.json."""
    np.save(os.path.join(directory, EMBEDDINGS), np.ascontiguousarray(self.embeddings,
                                                                      np.float32))
    if self.item_ids is not None:
      save_item_ids(os.path.join(directory, ITEM_IDS), self.item_ids)
    if self.searcher is not None:
      path = os.path.join(directory, searcher_dir)
      os.makedirs(path)
      self.searcher.serialize(path, relative_path=True)
    meta = self.describe(searcher_dir if self.searcher is not None else None)
    meta["files"] = file_hashes(directory)
    fileio.atomic_write_json(os.path.join(directory, INDEX_JSON), meta)
    return meta

  def describe(self, searcher_dir: Optional[str] = None) -> dict:
    return {"format": FORMAT, "kind": self.kind, "metric": "dot_product",
            "num_items": self.num_items, "dim": int(self.embeddings.shape[1]),
            "fingerprint": self.fingerprint, "params": self.params,
            "searcher_dir": searcher_dir, "scann_version": _version("scann"),
            "build_seconds": round(self.build_seconds, 3)}


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _scann_pybind():
  from scann.scann_ops.py import scann_ops_pybind
  return scann_ops_pybind


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean |approx_b ∩ exact_b| / |exact_b| over rows (the ANN-vs-exact recall@k)."""
  hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)]
  return float(np.sum(hits) / max(exact.size, 1))


def default_num_leaves(num_items: int) -> int:
  """~sqrt(N) partitions (ScaNN's rule of thumb), each holding at least ~100 items."""
  return int(max(2, min(round(math.sqrt(num_items)), num_items // 100)))


def build_searcher(embeddings: np.ndarray, *, recall_target: float = 0.95,
                   sample_queries: Optional[np.ndarray] = None, k: int = 10,
                   brute_force_below: int = 20000, force_brute_force: bool = False,
                   num_leaves: Optional[int] = None, dimensions_per_block: int = 2,
                   anisotropic_quantization_threshold: float = 0.2,
                   training_sample_size: int = 250_000, training_threads: int = 0,
                   max_tuning_seconds: float = 120.0) -> Index:
  """A searcher over ``embeddings`` [N, D] whose recall@k on ``sample_queries`` reaches
  ``recall_target`` (plus two standard errors, so that held-out queries reach it too).

  The tree and the hash codes are built once; only search-time knobs are tuned, so tuning
  costs searches, not rebuilds. Returns an Index of kind 'brute_force' when N is below
  ``brute_force_below`` or when asked.
  """
  embeddings = np.ascontiguousarray(embeddings, np.float32)
  if embeddings.ndim != 2 or len(embeddings) == 0:
    raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got {embeddings.shape}")
  if not 0 < recall_target <= 1:
    raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
  if not np.isfinite(embeddings).all():
    raise ValueError("embeddings contain NaN or infinite values; the model diverged?")
  n, dim = embeddings.shape
  if force_brute_force or n < brute_force_below:
    return Index(BRUTE_FORCE, embeddings, params={"tuned_k": k})
  if sample_queries is None or len(sample_queries) == 0:
    raise ValueError("sample_queries are needed to tune the ScaNN searcher")
  queries = np.ascontiguousarray(sample_queries, np.float32)
  leaves = num_leaves or default_num_leaves(n)
  start = time.perf_counter()
  builder = (_scann_pybind().builder(embeddings, k, "dot_product")
             .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20),
                   training_sample_size=min(n, training_sample_size))
             .score_ah(dimensions_per_block,
                       anisotropic_quantization_threshold=anisotropic_quantization_threshold)
             .reorder(min(n, 10 * k)))
  if training_threads:
    builder = builder.set_n_training_threads(training_threads)
  searcher = builder.build()
  build_seconds = time.perf_counter() - start
  logging.info("built a ScaNN searcher over %d x %d in %.1fs (%d leaves)", n, dim,
               build_seconds, leaves)

  index = Index(SCANN, embeddings, searcher, params={
      "num_leaves": leaves, "dimensions_per_block": dimensions_per_block,
      "anisotropic_quantization_threshold": anisotropic_quantization_threshold,
      "reorder": "float32", "tuned_k": k, "recall_target": recall_target},
      build_seconds=build_seconds)
  _tune(index, queries, k, recall_target, max_tuning_seconds)
  return index


def _tune(index: Index, queries: np.ndarray, k: int, target: float,
          max_seconds: float) -> None:
  """Cheapest (leaves, reorder depth) whose recall@k on ``queries`` clears the target.

  For each reordering depth, a binary search over a geometric grid of leaf counts (recall
  grows with both) finds the fewest leaves that reach the goal; the fastest of those wins.
  The goal is the target plus two standard errors of the per-query recall.
  """
  n, leaves = index.num_items, index.params["num_leaves"]
  exact, _ = exact_top_k(queries, index.embeddings, k)
  leaf_grid = sorted({min(leaves, max(1, round(1.25 ** e))) for e in range(
      int(math.log(leaves, 1.25)) + 2)})
  depth_grid = sorted({min(n, k * m) for m in (2, 4, 8, 16, 32)})
  trials, deadline = [], time.perf_counter() + max_seconds

  def evaluate(num, depth):
    t0 = time.perf_counter()
    rows, _ = index.search(queries, k, parallel=False, leaves_to_search=num,
                           pre_reorder_num_neighbors=depth)
    seconds = time.perf_counter() - t0
    per_query = np.array([len(np.intersect1d(a, e)) / len(e) for a, e in zip(rows, exact)])
    trial = {"leaves_to_search": num, "pre_reorder_num_neighbors": depth,
             "recall": round(float(per_query.mean()), 4),
             "stderr": round(float(per_query.std() / math.sqrt(len(per_query))), 4),
             "ms_per_query": round(1000 * seconds / len(queries), 4)}
    trials.append(trial)
    return trial

  def meets(trial):
    return trial["recall"] >= min(target + 2 * trial["stderr"], 1.0)

  feasible = []
  for depth in depth_grid:
    lo, hi = 0, len(leaf_grid) - 1
    top = evaluate(leaf_grid[hi], depth)
    if not meets(top):
      continue
    best = top
    while lo < hi and time.perf_counter() < deadline:
      mid = (lo + hi) // 2
      trial = evaluate(leaf_grid[mid], depth)
      if meets(trial):
        hi, best = mid, trial
      else:
        lo = mid + 1
    feasible.append(best)
    if time.perf_counter() > deadline:
      logging.warning("ScaNN tuning stopped after %.0fs", max_seconds)
      break
  if feasible:
    best = min(feasible, key=lambda t: t["ms_per_query"])
  else:
    best = max(trials, key=lambda t: (t["recall"], -t["ms_per_query"]))
    logging.warning("no setting reached recall@%d >= %.3f; using the best found (%.3f)",
                    k, target, best["recall"])
  index.params.update(leaves_to_search=best["leaves_to_search"],
                      pre_reorder_num_neighbors=best["pre_reorder_num_neighbors"],
                      tuning_recall=best["recall"], tuning_stderr=best["stderr"],
                      tuning_queries=len(queries))
  index.tuning = trials
  logging.info("tuned ScaNN: %s", best)


# --------------------------------------------------------------------------- measurement


def _timed(fn, repeats: int) -> float:
  """Best-of-``repeats`` wall time of fn(): the least disturbed measurement."""
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def numpy_brute_force(queries: np.ndarray, embeddings: np.ndarray, k: int,
                      batch: int = 64) -> np.ndarray:
  """The plain numpy baseline: float32 matmul + argpartition + sort of the k."""
  out = []
  for start in range(0, len(queries), batch):
    scores = queries[start:start + batch] @ embeddings.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
    out.append(np.take_along_axis(part, order, 1))
  return np.concatenate(out)


def measure(index: Index, queries: np.ndarray, *, ks=(10, 100),
            single_queries: int = 200, brute_force_single_queries: int = 50,
            repeats: int = 3) -> dict:
  """Recall@k against exact search, and QPS of the index and of numpy brute force measured
  side by side on the same queries (single-query loop, and one batched call)."""
  queries = np.ascontiguousarray(queries, np.float32)
  emb = index.embeddings
  out = {"kind": index.kind, "num_items": index.num_items, "dim": int(emb.shape[1]),
         "num_queries": len(queries)}
  for k in ks:
    k_eff = min(k, index.num_items)
    exact, _ = exact_top_k(queries, emb, k_eff)
    approx, _ = index.search(queries, k_eff)
    out[f"recall@{k}"] = round(recall(approx, exact), 4)
  k = min(ks[0], index.num_items)
  single = queries[:single_queries]
  if index.searcher is not None:
    leaves, depth = index.params["leaves_to_search"], index.pre_reorder_for(k)
    search_one = lambda: [index.searcher.search(q, k, depth, leaves) for q in single]
  else:
    search_one = lambda: [index.search(q[None], k) for q in single]
  out["qps_single"] = round(len(single) / _timed(search_one, repeats), 1)
  out["qps_batched"] = round(len(queries) / _timed(lambda: index.search(queries, k), repeats), 1)
  bf_single = queries[:brute_force_single_queries]
  out["brute_force_qps_single"] = round(len(bf_single) / _timed(
      lambda: [numpy_brute_force(q[None], emb, k) for q in bf_single], repeats), 1)
  out["brute_force_qps_batched"] = round(len(queries) / _timed(
      lambda: numpy_brute_force(queries, emb, k), repeats), 1)
  out["speedup_single"] = round(out["qps_single"] / out["brute_force_qps_single"], 2)
  out["speedup_batched"] = round(out["qps_batched"] / out["brute_force_qps_batched"], 2)
  return out


# --------------------------------------------------------------------------- load


def load_index(directory: str, *, verify: bool = True, check_files: bool = True) -> Index:
  """Loads an index written by Index.save, checking every file's sha256 (unless the caller
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
    verify_files(directory, files, "candidate index", fix)
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
  pybind = _scann_pybind()
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


# --------------------------------------------------------------------------- workdir


def latest_histories(data, history_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Every user with events, and their last L items over the whole log (the query a
  returning user makes at serving time): (user ids [U], item ids [U, L])."""
  from twotower.data.prepare import gather_history
  ev = data.events
  if len(ev) == 0:
    return np.zeros(0, np.int32), np.zeros((0, history_length), np.int32)
  first = np.flatnonzero(np.r_[True, ev.user[1:] != ev.user[:-1]])
  end = np.r_[first[1:], len(ev)]
  history = gather_history(ev.item, first.astype(np.int64), end.astype(np.int64),
                           history_length)
  return ev.user[first].astype(np.int32), history


def build_index(workdir: str, *, recall_target: float = 0.95,
                brute_force_below: int = 20000, force_brute_force: bool = False,
                num_tuning_queries: int = 1000, seed: int = 0) -> dict:
  """Encodes the corpus with the trained item tower, builds and tunes the searcher on real
  user queries, reports it on held-out ones, and writes ``<workdir>/index/`` atomically."""
  from twotower.model.encoding import Encoder
  from twotower.workdir import Workdir, load_trained
  run = load_trained(workdir)
  wd = Workdir(workdir)
  encoder = Encoder(run.model, run.data)
  embeddings = encoder.items()
  users, history = latest_histories(run.data, run.config.data.history_length)
  rng = np.random.default_rng(seed)
  pick = rng.permutation(len(users))[:2 * num_tuning_queries]
  queries = encoder.users(users[pick], history[pick])
  if len(queries) >= 2 * min(num_tuning_queries, 100):   # disjoint tuning / report queries
    half = len(queries) // 2
    tune_q, report_q = queries[:half], queries[half:]
  else:
    tune_q = report_q = queries
  index = build_searcher(embeddings, recall_target=recall_target, sample_queries=tune_q,
                         brute_force_below=brute_force_below,
                         force_brute_force=force_brute_force)
  index.item_ids = run.data.item_vocab.tokens
  report = measure(index, report_q) if len(report_q) else {"kind": index.kind}
  with atomic_directory(wd.index) as tmp:
    meta = index.save(tmp)
  size = sum(os.path.getsize(os.path.join(wd.index, *rel.split("/")))
             for rel in meta["files"] if rel.startswith(f"{SEARCHER}/"))
  report.update(params=index.params, build_seconds=round(index.build_seconds, 3),
                fingerprint=meta["fingerprint"],
                index_bytes=size or int(index.embeddings.nbytes),
                float32_bytes=int(index.embeddings.nbytes),
                tuning_trials=len(index.tuning))
  report["index_to_float32"] = round(report["index_bytes"] / report["float32_bytes"], 3)
  metrics = fileio.read_json(wd.metrics) if os.path.exists(wd.metrics) else {}
  metrics["index"] = report
  fileio.atomic_write_json(wd.metrics, metrics)
  logging.info("index: %s", report)
  return report
