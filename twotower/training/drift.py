"""Embedding drift: how fast the item tower is still moving (Wang et al., SIGIR 2021, §3).

Cross-batch negatives are only as good as the embeddings in the queue are current. The
paper's feature drift is the mean L2 change of item embeddings over Δt steps: large early
in training, small once the towers settle, which is when stale queue entries become
usable negatives. The monitor re-encodes a fixed sample of items every Δt steps (a few
milliseconds for 1,024 items) and reports that change; the loop logs it and, with
``--queue_warmup_drift``, switches the queue on when it falls below the threshold.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from twotower.model.encoding import Encoder


class DriftMonitor:
  """Mean L2 change of a fixed item sample's embeddings between successive measurements."""

  def __init__(self, encoder: Encoder, corpus_ids: np.ndarray, sample_size: int, seed: int):
    corpus_ids = np.asarray(corpus_ids, np.int32)
    rng = np.random.default_rng([seed, 23])
    size = min(sample_size, len(corpus_ids))
    self.ids = np.sort(corpus_ids[rng.choice(len(corpus_ids), size, replace=False)])
    self._encoder = encoder
    self._previous: Optional[np.ndarray] = None

  def measure(self) -> Optional[float]:
    """Drift since the previous call; None on the first call (nothing to compare with)."""
    current = self._encoder.items(self.ids)
    previous, self._previous = self._previous, current
    if previous is None:
      return None
    return float(np.mean(np.linalg.norm(current - previous, axis=1)))
