"""Candidate sampling probabilities q(item) for the logQ correction (Yi et al., RecSys 2019).

In-batch candidates are sampled in proportion to their frequency in the stream, so popular
items are over-represented as negatives; subtracting log q from each logit makes the sampled
softmax an unbiased estimate of the full one.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class StaticFrequency(tf.Module):
  """log q from a count table over the whole training log (known in advance)."""

  def __init__(self, counts_by_id: np.ndarray, name: str = "static_frequency"):
    super().__init__(name=name)
    counts = np.asarray(counts_by_id, np.float64)
    # Items never seen in training are never sampled as in-batch candidates; give them the
    # probability of one occurrence so that the table stays finite.
    probs = np.maximum(counts, 1.0) / max(counts.sum(), 1.0)
    self.table = tf.constant(np.log(probs).astype(np.float32))

  def log_q(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.gather(self.table, ids)

  def update(self, ids: tf.Tensor) -> None:
    """Nothing to learn: the counts are fixed."""
    del ids
