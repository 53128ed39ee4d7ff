"""MovieLens-100K, fetched from the recbole 1.2.1 wheel on PyPI, verified and cached.

The wheel ships RecBole's atomic copy of ML-100K. Going through PyPI (with ``pip
download``) rather than grouplens.org reuses whatever index, proxy and certificates the
user's pip already has, and the pinned sha256 makes the bytes reproducible: a changed
or tampered wheel is refused before it is opened.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Optional, Union

from absl import logging

from twotower import fileio
from twotower.data import readers, types
from twotower.errors import UserError

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_FILENAME = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_ENV = "TWOTOWER_RECBOLE_WHEEL"   # use this already-downloaded wheel instead of pip
CACHE_ENV = "TWOTOWER_CACHE"

DATASET_NAME = "movielens-100k"
_SUBDIR = "ml-100k"
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_MARKER = ".complete"
_MAX_MEMBER_BYTES = 64 << 20   # the real files are < 2 MB; refuse anything absurd

PathLike = Union[str, os.PathLike]


class FetchError(UserError, RuntimeError):
  """The dataset could not be downloaded, verified or unpacked: the job says so in one line
  (the cause is the machine's network, pip or disk, not the code)."""


def default_cache_dir() -> pathlib.Path:
  """``$TWOTOWER_CACHE``, else ``~/.cache/twotower``."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or
                      os.path.join(os.path.expanduser("~"), ".cache", "twotower"))


def _is_complete(directory: pathlib.Path) -> bool:
  return all((directory / name).is_file() for name in (*FILES, _MARKER))


def _download_wheel(directory: pathlib.Path) -> pathlib.Path:
  """``pip download`` of the pinned wheel into ``directory``."""
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:",
             "--only-binary=:all:", "-d", str(directory), RECBOLE_WHEEL]
  logging.info("Downloading %s from PyPI for %s: %s", RECBOLE_WHEEL, DATASET_NAME,
               " ".join(command))
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
  except OSError as e:
    raise FetchError(f"could not run pip to download {RECBOLE_WHEEL}: {e}") from e
  if result.returncode != 0:
    output = (result.stdout + result.stderr).strip()[-4000:]
    raise FetchError(
        f"`pip download {RECBOLE_WHEEL}` failed (exit code {result.returncode}); "
        f"{DATASET_NAME} is extracted from that wheel, so this needs network access to "
        f"PyPI (or a pip index/proxy configured for it). Alternatively download "
        f"{RECBOLE_WHEEL_FILENAME} elsewhere and set {WHEEL_ENV}=/path/to/it, or pass "
        f"your own files with --interactions.\npip output:\n{output}")
  wheel = directory / RECBOLE_WHEEL_FILENAME
  if not wheel.is_file():
    found = sorted(p.name for p in directory.iterdir())
    raise FetchError(f"pip download succeeded but {RECBOLE_WHEEL_FILENAME} is not among "
                     f"the downloaded files: {found}")
  return wheel


def _verify(wheel: pathlib.Path) -> None:
  actual = fileio.sha256_file(str(wheel))
  if actual != RECBOLE_WHEEL_SHA256:
    raise FetchError(
        f"{wheel}: sha256 mismatch: expected {RECBOLE_WHEEL_SHA256}, got {actual}. The "
        f"file is not the pinned {RECBOLE_WHEEL_FILENAME}; refusing to open it.")
  logging.info("Verified sha256 of %s", wheel)


def _safe_name(name: str) -> bool:
  parts = name.replace("\\", "/").split("/")
  return not (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
              or ".." in parts)


def _extract(wheel: pathlib.Path, destination: pathlib.Path) -> None:
  """Copies the three atomic files out of the (verified) wheel, nothing else."""
  try:
    archive = zipfile.ZipFile(wheel)
  except zipfile.BadZipFile as e:
    raise FetchError(f"{wheel}: not a valid wheel (zip) file: {e}") from e
  with archive:
    infos = archive.infolist()
    unsafe = [info.filename for info in infos if not _safe_name(info.filename)]
    if unsafe:
      raise FetchError(f"{wheel}: refusing to extract from an archive with unsafe member "
                       f"names {unsafe[:5]}")
    by_name = {info.filename: info for info in infos}
    for name in FILES:
      info = by_name.get(_MEMBER_DIR + name)
      if info is None:
        raise FetchError(f"{wheel}: member {_MEMBER_DIR + name} not found")
      if info.file_size > _MAX_MEMBER_BYTES:
        raise FetchError(f"{wheel}: member {info.filename} is implausibly large "
                         f"({info.file_size} bytes)")
      # The destination name is ours, never the member's, so nothing can escape it.
      with archive.open(info) as source, open(destination / name, "wb") as target:
        shutil.copyfileobj(source, target)


def fetch_movielens_100k(cache_dir: Optional[PathLike] = None) -> pathlib.Path:
  """Returns ``<cache>/ml-100k`` holding RecBole's ml-100k.{inter,user,item}.

  Downloads and verifies the wheel on first use only; the directory appears atomically
  (renamed into place with a ``.complete`` marker), so an interrupted fetch is redone.
  """
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  target = cache / _SUBDIR
  if _is_complete(target):
    logging.info("Using cached %s at %s", DATASET_NAME, target)
    return target
  cache.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{_SUBDIR}-", dir=cache))
  try:
    local_wheel = os.environ.get(WHEEL_ENV)
    if local_wheel:
      wheel = pathlib.Path(local_wheel)
      if not wheel.is_file():
        raise FetchError(f"{WHEEL_ENV}={local_wheel}: file not found")
      logging.info("Using %s from %s=%s", RECBOLE_WHEEL_FILENAME, WHEEL_ENV, wheel)
    else:
      download = staging / "download"
      download.mkdir()
      wheel = _download_wheel(download)
    _verify(wheel)
    files = staging / _SUBDIR
    files.mkdir()
    _extract(wheel, files)
    (files / _MARKER).write_text(f"{RECBOLE_WHEEL_FILENAME} sha256={RECBOLE_WHEEL_SHA256}\n")
    if _is_complete(target):   # a concurrent fetch finished first
      return target
    if target.exists():   # a leftover of an interrupted fetch
      shutil.rmtree(target)
    try:
      os.replace(files, target)
    except OSError:
      if not _is_complete(target):   # lost a race to a concurrent fetch: fine
        raise
    logging.info("Cached %s at %s", DATASET_NAME, target)
    return target
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def load_movielens_100k(cache_dir: Optional[PathLike] = None) -> types.RawDataset:
  """MovieLens-100K with RecBole's user and item features (fetched on first use)."""
  directory = fetch_movielens_100k(cache_dir)
  return types.RawDataset(
      name=DATASET_NAME,
      interactions=readers.read_interactions(str(directory / "ml-100k.inter")),
      user_features=readers.read_features(str(directory / "ml-100k.user"), "user_id"),
      item_features=readers.read_features(str(directory / "ml-100k.item"), "item_id"))
