"""Candidate sampling probabilities q(item) for the logQ correction (Yi et al., RecSys 2019).

In-batch candidates are sampled in proportion to their frequency in the stream, so popular
items are over-represented as negatives; subtracting log q from each logit makes the sampled
softmax an unbiased estimate of the full one.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from twotower.model.replicas import ONLY_FIRST_REPLICA as _ONE
from twotower.model.replicas import scatter_update


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

  def log_rate(self, ids: tf.Tensor, num_candidates) -> tf.Tensor:
    """log expected occurrences among ``num_candidates`` stream-drawn candidates."""
    return self.log_q(ids) + tf.math.log(tf.cast(num_candidates, tf.float32))

  def update(self, ids: tf.Tensor) -> None:
    """Nothing to learn: the counts are fixed."""
    del ids


class StreamingFrequencyEstimator(tf.Module):
  """Yi et al. 2019, Algorithms 2 and 3: per-hash-bucket moving average of the number of
  steps between an item's appearances; the sampling probability is its inverse.

  Arrays A (last step an item was seen) and B (estimated gap) live in tf.Variables, are
  updated in-graph every step and are saved with the checkpoint. With several hash functions
  collisions only ever shorten a bucket's gap, so the longest gap over the hashes is the
  least-collided estimate. An item seen c times in one step counts as c arrivals, so the
  estimate is the expected number of occurrences per step (it can exceed 1), which is what
  the logQ correction of a batch of candidates needs.
  """

  # Odd multipliers for multiplicative hashing of integer ids (Knuth).
  _MULTIPLIERS = (2654435761, 2246822519, 3266489917, 668265263, 374761393)

  def __init__(self, num_buckets: int, num_hashes: int = 1, learning_rate: float = 0.01,
               name: str = "streaming_frequency"):
    super().__init__(name=name)
    if num_buckets <= 0 or not 1 <= num_hashes <= len(self._MULTIPLIERS):
      raise ValueError(f"need num_buckets > 0 and 1 <= num_hashes <= "
                       f"{len(self._MULTIPLIERS)}")
    if not 0 < learning_rate <= 1:
      raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
    self.num_buckets, self.num_hashes, self.learning_rate = num_buckets, num_hashes, learning_rate
    self.step = tf.Variable(tf.constant(0, tf.int64), trainable=False, aggregation=_ONE,
                            name="step")
    self.last_seen = tf.Variable(tf.zeros([num_hashes, num_buckets], tf.int64),
                                 trainable=False, aggregation=_ONE, name="A")
    # Unseen buckets start with a gap as long as the table: a small, finite probability.
    self.gap = tf.Variable(tf.fill([num_hashes, num_buckets], float(num_buckets)),
                           trainable=False, aggregation=_ONE, name="B")

  def _buckets(self, ids: tf.Tensor) -> tf.Tensor:
    """[num_hashes, n] bucket of each id under each hash."""
    ids = tf.cast(ids, tf.int64)
    if self.num_hashes == 1:
      return (ids % self.num_buckets)[None, :]
    rows = [((ids * m) % 4294967311) % self.num_buckets
            for m in self._MULTIPLIERS[:self.num_hashes]]
    return tf.stack(rows)

  def update(self, ids: tf.Tensor) -> None:
    self.step.assign_add(1)
    unique, _, counts = tf.unique_with_counts(tf.reshape(tf.cast(ids, tf.int64), [-1]))
    buckets = self._buckets(unique)                              # [H, U]
    hash_rows = tf.broadcast_to(tf.range(self.num_hashes, dtype=tf.int64)[:, None],
                                tf.shape(buckets))
    index = tf.stack([hash_rows, buckets], axis=-1)              # [H, U, 2]
    last = tf.gather_nd(self.last_seen, index)
    since = tf.cast(self.step - last, tf.float32)
    counts = tf.cast(counts, tf.float32)[None, :]
    # c arrivals in one step are c updates with gap since/c each; weighting by c makes the
    # estimate a ratio (steps / arrivals) instead of a biased mean of 1/c.
    rate = 1.0 - tf.pow(1.0 - self.learning_rate, counts)
    updated = (1.0 - rate) * tf.gather_nd(self.gap, index) + rate * since / counts
    # A bucket's first sighting replaces the arbitrary initial gap outright.
    updated = tf.where(tf.equal(last, 0), since / counts, updated)
    scatter_update(self.gap, index, updated)
    scatter_update(self.last_seen, index, tf.fill(tf.shape(buckets), self.step.read_value()))

  def probability(self, ids: tf.Tensor) -> tf.Tensor:
    """Estimated occurrences per step of each id."""
    buckets = self._buckets(tf.reshape(ids, [-1]))
    hash_rows = tf.broadcast_to(tf.range(self.num_hashes, dtype=tf.int64)[:, None],
                                tf.shape(buckets))
    gaps = tf.gather_nd(self.gap, tf.stack([hash_rows, buckets], axis=-1))
    p = 1.0 / tf.maximum(tf.reduce_max(gaps, axis=0), 1e-6)
    return tf.reshape(p, tf.shape(ids))

  def log_q(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.math.log(self.probability(ids))

  def log_rate(self, ids: tf.Tensor, num_candidates) -> tf.Tensor:
    """log expected occurrences per step: the estimate already counts the global batch."""
    del num_candidates
    return self.log_q(ids)
