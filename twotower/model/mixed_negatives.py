"""Mixed Negative Sampling (Yang et al., WWW 2020 companion): corpus-sampled negatives.

In-batch and queue candidates are drawn from the training stream, so items that are rare in
it are almost never negatives, and their embeddings are never pushed away from users who do
not want them. MNS adds B' items per step sampled from the whole corpus (uniformly, or by a
smoothed popularity), encoded through the item tower with the batch. The logQ term then uses
the mixture: an item's expected occurrences among a step's candidates are
``rate_stream(i) + B' r(i)``, with r the corpus sampling distribution.

Sampling is stateless, seeded by (seed, step): deterministic, identical on every replica (each
replica encodes the same B' items, which keeps the loss equal to one device's), and resumed
exactly from a checkpoint because the step is. TFRS has no such sampler.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from twotower.config import MIXED_NEGATIVES_DISTRIBUTIONS

DISTRIBUTIONS = MIXED_NEGATIVES_DISTRIBUTIONS

# Smoothing exponent of popularity sampling (word2vec's unigram^0.75): between uniform (0)
# and the stream's own distribution (1), which in-batch candidates already cover.
POPULARITY_POWER = 0.75


class MixedNegativeSampler(tf.Module):
  """Samples ``num_samples`` corpus item ids per step and gives their log probability."""

  def __init__(self, num_samples: int, distribution: str, corpus_ids: np.ndarray,
               counts: np.ndarray, vocab_size: int, seed: int = 0,
               name: str = "mixed_negatives"):
    super().__init__(name=name)
    if num_samples <= 0:
      raise ValueError(f"--mixed_negatives must be positive to sample, got {num_samples}")
    if distribution not in DISTRIBUTIONS:
      raise ValueError(f"--mixed_negatives_distribution must be one of {DISTRIBUTIONS}, "
                       f"got {distribution!r}")
    if len(corpus_ids) == 0:
      raise ValueError("mixed negatives need a non-empty item corpus")
    self.num_samples, self.distribution, self.seed = num_samples, distribution, seed
    if distribution == "uniform":
      weights = np.ones(len(corpus_ids))
    else:   # never-seen items keep a small chance, as one occurrence
      weights = np.maximum(np.asarray(counts, np.float64), 1.0) ** POPULARITY_POWER
    probs = weights / weights.sum()
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    self._cdf = tf.constant(cdf, tf.float64)
    self._corpus_ids = tf.constant(np.asarray(corpus_ids, np.int32))
    log_prob = np.full(vocab_size, -np.inf, np.float32)   # padding / OOV rows: never drawn
    log_prob[corpus_ids] = np.log(probs)
    self._log_prob = tf.constant(log_prob)

  def sample(self, step: tf.Tensor) -> tf.Tensor:
    """[num_samples] item ids drawn with replacement (inverse CDF: O(B' log N), where a
    categorical draw over a 1M-item corpus would be O(B' N))."""
    u = tf.random.stateless_uniform([self.num_samples], seed=tf.stack(
        [tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)]), dtype=tf.float64)
    index = tf.searchsorted(self._cdf, u, side="right")
    return tf.gather(self._corpus_ids, tf.minimum(index, tf.size(self._corpus_ids) - 1))

  def log_prob(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.gather(self._log_prob, ids)

  def mixture_log_q(self, stream_log_rate: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """log(rate_stream + B' r): log of the expected occurrences among a step's candidates."""
    sampled = np.log(self.num_samples) + self.log_prob(ids)
    return tf.reduce_logsumexp(tf.stack([stream_log_rate, sampled]), axis=0)
