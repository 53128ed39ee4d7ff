"""Cross-Batch Negative Sampling memory (Wang, Zhu, He, SIGIR 2021).

A FIFO ring buffer of the item embeddings of the last M training candidates, with their item
ids (for accidental-hit and history masks) and their log sampling probabilities (for logQ).
Entries are written after the optimizer step with stop-gradient, so they cost no encoding.
The buffer is made of tf.Variables: it is saved and restored with the training checkpoint,
and it is not part of any serving export. Neither TFRS nor Keras ships such a queue.
"""
from __future__ import annotations

import tensorflow as tf

from twotower.model.replicas import ONLY_FIRST_REPLICA as _ONE
from twotower.model.replicas import scatter_update

EMPTY_ID = -1


class CrossBatchQueue(tf.Module):

  def __init__(self, size: int, dim: int, name: str = "cross_batch_queue"):
    super().__init__(name=name)
    if size <= 0:
      raise ValueError(f"queue size must be positive, got {size}")
    self.size = size
    self.embeddings = tf.Variable(tf.zeros([size, dim]), trainable=False,
                                  aggregation=_ONE, name="embeddings")
    self.ids = tf.Variable(tf.fill([size], EMPTY_ID), trainable=False, aggregation=_ONE,
                           name="ids")
    self.log_q = tf.Variable(tf.zeros([size]), trainable=False, aggregation=_ONE,
                             name="log_q")
    # Total entries ever written; the next write goes to slot (count mod size).
    self.count = tf.Variable(tf.constant(0, tf.int64), trainable=False, aggregation=_ONE,
                             name="count")

  def enqueue(self, embeddings: tf.Tensor, ids: tf.Tensor, log_q: tf.Tensor) -> None:
    """Appends a batch, evicting the oldest entries (only the newest `size` of a larger batch
    are kept)."""
    n = tf.shape(ids, out_type=tf.int64)[0]
    keep = tf.minimum(n, self.size)
    embeddings = tf.stop_gradient(embeddings[n - keep:])
    ids, log_q = ids[n - keep:], tf.stop_gradient(log_q[n - keep:])
    slots = (self.count + (n - keep) + tf.range(keep, dtype=tf.int64)) % self.size
    slots = slots[:, None]
    scatter_update(self.embeddings, slots, embeddings)
    scatter_update(self.ids, slots, tf.cast(ids, self.ids.dtype))
    scatter_update(self.log_q, slots, log_q)
    self.count.assign_add(n)

  def ordered(self):
    """(embeddings, ids, log_q) of the filled slots, oldest first (for inspection and tests)."""
    filled = tf.minimum(self.count, self.size)
    start = (self.count - filled) % self.size
    order = (start + tf.range(filled, dtype=tf.int64)) % self.size
    return (tf.gather(self.embeddings, order), tf.gather(self.ids, order),
            tf.gather(self.log_q, order))

  def reset(self) -> None:
    self.embeddings.assign(tf.zeros_like(self.embeddings))
    self.ids.assign(tf.fill([self.size], EMPTY_ID))
    self.log_q.assign(tf.zeros_like(self.log_q))
    self.count.assign(0)
