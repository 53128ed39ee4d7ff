"""tf.data input pipelines.

A training example is (user features, the user's most recent L items strictly before this
interaction, the target item and its features). The pipeline shuffles and batches event
*indices* and builds each batch's features with a few vectorised gathers from constant
tables, so per-example Python never runs and memory stays O(events), not O(events x L).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from twotower import cpus
from twotower.data import splits as splits_lib
from twotower.data.prepare import PreparedData
from twotower.data.vocab import PAD

HISTORY = "history"


def gather_history(items: tf.Tensor, start: tf.Tensor, end: tf.Tensor, length: int) -> tf.Tensor:
  """items[max(start, end-L):end] per row, right-aligned, PAD in front."""
  pos = end[:, None] - length + tf.range(length, dtype=end.dtype)[None, :]
  valid = pos >= start[:, None]
  safe = tf.clip_by_value(pos, 0, tf.cast(tf.shape(items)[0] - 1, pos.dtype))
  return tf.where(valid, tf.gather(items, safe), tf.constant(PAD, items.dtype))


class FeatureGather:
  """Turns id tensors into the towers' feature dicts with constant-table gathers."""

  def __init__(self, data: PreparedData):
    self._user_tables = {k: tf.constant(v) for k, v in data.user_features.values.items()}
    self._item_tables = {k: tf.constant(v) for k, v in data.item_features.values.items()}

  def user(self, user_ids: tf.Tensor, history: tf.Tensor) -> dict:
    out = {"user_id": user_ids, HISTORY: history}
    out.update({k: tf.gather(t, user_ids) for k, t in self._user_tables.items()})
    return out

  def item(self, item_ids: tf.Tensor) -> dict:
    out = {"item_id": item_ids}
    out.update({k: tf.gather(t, item_ids) for k, t in self._item_tables.items()})
    return out


def training_dataset(data: PreparedData, *, batch_size: int, history_length: int,
                     seed: int, epoch: int = 0, id_dropout: float = 0.0,
                     skip_batches: int = 0, drop_remainder: bool = False) -> tf.data.Dataset:
  """One epoch of training batches; the order is a function of (seed, epoch) only, so a
  resumed run sees exactly the batches the interrupted one would have."""
  ev = data.events
  train_idx = np.flatnonzero(ev.split == splits_lib.TRAIN).astype(np.int64)
  rng = np.random.default_rng([seed, epoch])
  train_idx = train_idx[rng.permutation(len(train_idx))]
  items = tf.constant(ev.item)
  users = tf.constant(ev.user)
  starts = tf.constant(ev.user_start)
  ends = tf.constant(ev.history_end)
  gather = FeatureGather(data)
  num_oov = data.user_vocab.num_oov_buckets

  def make_batch(idx, step):
    user_ids = tf.gather(users, idx)
    if id_dropout > 0:
      # Replace a few user ids by an OOV id so that the OOV rows unseen users get at
      # serving time are trained. Seeded per step: deterministic and resumable.
      drop = tf.random.stateless_uniform(tf.shape(user_ids), [seed, step]) < id_dropout
      user_ids = tf.where(drop, tf.constant(1 + (num_oov - 1) // 2, user_ids.dtype), user_ids)
    history = gather_history(items, tf.gather(starts, idx), tf.gather(ends, idx), history_length)
    return {"user": gather.user(user_ids, history), "item": gather.item(tf.gather(items, idx))}

  steps = steps_per_epoch(data, batch_size, drop_remainder)
  ds = tf.data.Dataset.from_tensor_slices(train_idx).batch(batch_size,
                                                           drop_remainder=drop_remainder)
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps))
  return map_batches(ds.skip(skip_batches), make_batch)


def map_batches(ds: tf.data.Dataset, make_batch: Callable[..., dict]) -> tf.data.Dataset:
  """``ds.map(make_batch)`` in order on every CPU, two batches ahead, without autotuning.

  An epoch's dataset is built afresh (its order depends on the epoch), and deleting an
  autotuned iterator at the epoch's end waited for tf.data's autotuning thread: 0 to 4.8 s
  per epoch (measured on the ranking head, whose epochs are about 6 s of steps). A batch
  here is a few gathers, far cheaper than the step that consumes it, so fixed parallelism
  and a two-batch buffer keep the step fed.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  ds = ds.map(make_batch, num_parallel_calls=cpus.available(), deterministic=True)
  return ds.prefetch(2).with_options(options)


def steps_per_epoch(data: PreparedData, batch_size: int, drop_remainder: bool = False) -> int:
  n = int((data.events.split == splits_lib.TRAIN).sum())
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batched(features: dict, batch_size: int):
  """Yields slices of a dict of equally long numpy arrays (for encoding corpora)."""
  n = len(next(iter(features.values())))
  for start in range(0, n, batch_size):
    yield {k: v[start:start + batch_size] for k, v in features.items()}
