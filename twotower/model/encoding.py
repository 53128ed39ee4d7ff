"""Batched encoding of the item corpus and of user queries with trained towers."""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from twotower.data.pipeline import FeatureGather
from twotower.data.prepare import PreparedData


def _encode_items(model, gather: FeatureGather, ids):
  return model.item_tower(gather.item(ids), training=False)


def _encode_users(model, gather: FeatureGather, ids, history):
  return model.user_tower(gather.user(ids, history), training=False)


class Encoder:
  """Runs the towers over numpy id arrays in fixed-size batches (one traced function each)."""

  def __init__(self, model, data: PreparedData, batch_size: int = 4096):
    self._data = data
    self._batch_size = batch_size
    gather = FeatureGather(data)
    # functools.partial, not a lambda: TensorFlow counts traces per code object, so every
    # Encoder's lambda (one per loaded model: training, ranking, index, export in one
    # pipeline process) would add to one count and log a spurious "excessive retracing"
    # warning. A partial is its own key.
    self._items = tf.function(functools.partial(_encode_items, model, gather),
                              reduce_retracing=True)
    self._users = tf.function(functools.partial(_encode_users, model, gather),
                              reduce_retracing=True)

  def items(self, item_ids: np.ndarray | None = None) -> np.ndarray:
    """Embeddings [N, D] of the given item ids (default: the whole corpus, in corpus order)."""
    ids = self._data.corpus_ids() if item_ids is None else np.asarray(item_ids, np.int32)
    return self._run(self._items, ids)

  def users(self, user_ids: np.ndarray, history: np.ndarray) -> np.ndarray:
    return self._run(self._users, np.asarray(user_ids, np.int32), np.asarray(history, np.int32))

  def _run(self, fn, *arrays) -> np.ndarray:
    out = []
    for start in range(0, len(arrays[0]), self._batch_size):
      out.append(fn(*(a[start:start + self._batch_size] for a in arrays)).numpy())
    if not out:
      return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)
