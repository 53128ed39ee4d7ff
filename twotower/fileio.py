"""File helpers: atomic writes of files and whole directories (a reader sees the old one or
the new one, never half of one), sha256 manifests, and manifest paths that cannot leave
their directory."""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator

from absl import logging

from twotower.errors import UserError


class IntegrityError(UserError, ValueError):
  """An artifact on disk is not what was written: corrupted, edited or mismatched."""


def atomic_write_bytes(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def resolve_inside(root: str, relative: str) -> str:
  """``root/relative`` for a '/'-separated path from a manifest, refusing one that would
  leave ``root`` (absolute, '..', or a symlink pointing out): a tampered manifest must not
  make a loader read or hash files elsewhere."""
  parts = str(relative).split("/")
  if not relative or os.path.isabs(relative) or "\\" in relative or ".." in parts:
    raise ValueError(f"path {relative!r} in a manifest of {root} leaves that directory")
  path = os.path.join(root, *parts)
  real_root = os.path.realpath(root)
  if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
    raise ValueError(f"path {relative!r} in a manifest of {root} resolves outside it")
  return path


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
      path = resolve_inside(root, rel)
    except ValueError as e:
      raise IntegrityError(f"{what}: {e}; {fix}") from None
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{what}: {path} is missing; {fix}")
    if sha256_file(path) != digest:
      raise IntegrityError(f"{what}: {path} is corrupted (sha256 differs from the one "
                           f"recorded when it was written); {fix}")


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
