"""The ranking head's training batches: mined examples and their negatives as tf.data.

One epoch of (user features, [positive, negatives] ids, labels) in an order that depends on
(seed, epoch) only, so a resumed run sees the same batches.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.data.pipeline import FeatureGather
from twotower.training.ranking_mining import TrainingExamples


def ranking_dataset(data: prepare_lib.PreparedData, examples: TrainingExamples,
                    negatives: np.ndarray, *, batch_size: int, history_length: int,
                    seed: int, epoch: int, id_dropout: float,
                    skip_batches: int = 0) -> tf.data.Dataset:
  """One epoch of (user features, [positive, negatives] ids, labels) batches in an order
  that depends on (seed, epoch) only, so a resumed run sees the same batches."""
  ev = data.events
  offset = data.item_vocab.offset
  perm = np.random.default_rng([seed, epoch, 7]).permutation(len(examples.events))
  idx = examples.events[perm]
  items = np.concatenate([ev.item[idx][:, None].astype(np.int64),
                          negatives[perm] + offset], axis=1).astype(np.int32)
  labels = np.zeros(items.shape, np.float32)
  labels[:, 0] = examples.labels[perm]
  users_t, starts, ends = tf.constant(ev.user), tf.constant(ev.user_start), \
      tf.constant(ev.history_end)
  event_items = tf.constant(ev.item)
  gather = FeatureGather(data)
  num_oov = data.user_vocab.num_oov_buckets

  def make_batch(batch, step):
    event, item_ids, label = batch
    user_ids = tf.gather(users_t, event)
    if id_dropout > 0:
      # As in retrieval training: train the OOV row that unseen users get at serving.
      drop = tf.random.stateless_uniform(tf.shape(user_ids), [seed, step]) < id_dropout
      user_ids = tf.where(drop, tf.constant(1 + (num_oov - 1) // 2, user_ids.dtype), user_ids)
    history = pipeline.gather_history(event_items, tf.gather(starts, event),
                                      tf.gather(ends, event), history_length)
    return {"user": gather.user(user_ids, history), "item_id": item_ids, "label": label}

  steps = -(-len(idx) // batch_size)
  ds = tf.data.Dataset.from_tensor_slices((idx, items, labels)).batch(batch_size)
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps))
  return pipeline.map_batches(ds.skip(skip_batches), make_batch)
