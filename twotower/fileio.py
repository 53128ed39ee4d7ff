"""File helpers: atomic writes (a reader sees the old file or the new one, never half of one)
and manifest paths that cannot leave their directory."""
from __future__ import annotations

import json
import os
import tempfile


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
