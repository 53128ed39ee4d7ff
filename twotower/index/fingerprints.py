"""The fingerprint that ties an index, and an export, to the exact vectors it indexes."""
from __future__ import annotations

import hashlib

import numpy as np


def fingerprint(embeddings: np.ndarray) -> str:
  """sha256 of the float32 embedding bytes."""
  return hashlib.sha256(np.ascontiguousarray(embeddings, np.float32).data).hexdigest()
