"""The ranking head as a raw-string SavedModel: strings in (user id, history, user features,
candidate ids), scores out, so serving needs nothing but TensorFlow to re-rank.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras

from twotower.data.features import raw_feature_matrix_tf
from twotower.data.pipeline import HISTORY
from twotower.data.vocab import PAD, Vocabulary
from twotower.model.ranking import RankingModel
from twotower.model.ranking_reranker import SAVED_MODEL_DIR


def _string_lookup(vocab: Vocabulary) -> tf_keras.layers.StringLookup:
  """StringLookup with the Vocabulary's id layout, checked token by token."""
  # An array, not a list: the layer keeps its vocabulary argument, and tf.Module walks
  # every element of a list when saving (1M item ids made the export take 90 s).
  layer = tf_keras.layers.StringLookup(vocabulary=np.asarray(vocab.tokens, dtype=str),
                                       mask_token="",
                                       num_oov_indices=vocab.num_oov_buckets)
  probe = np.concatenate([vocab.tokens.astype(str),
                          ["", "<twotower-unseen-a>", "<twotower-unseen-b>"]])
  got = layer(tf.constant(probe)).numpy()
  want = vocab.lookup(probe.astype(object))
  if not np.array_equal(got, want):
    bad = int(np.flatnonzero(got != want)[0])
    raise ValueError(f"StringLookup maps {probe[bad]!r} to {got[bad]}, the vocabulary to "
                     f"{want[bad]}: the exported model would disagree with training")
  return layer


class _RawRanker(tf.Module):
  """Raw strings in, scores out: StringLookups, then the ranking model."""

  def __init__(self, model: RankingModel, data, history_length: int):
    super().__init__(name="ranking_model")
    self.model = model
    self.user_lookup = _string_lookup(data.user_vocab)
    self.item_lookup = _string_lookup(data.item_vocab)
    self._specs = list(data.user_features.specs)
    self.feature_lookups = {s.name: _string_lookup(s.vocab) for s in self._specs}
    reserved = {"user_id", HISTORY, "item_ids"} & set(self.feature_lookups)
    if reserved:
      raise ValueError(f"user feature names {sorted(reserved)} clash with ranking inputs")
    self._length = history_length
    self.history_length = tf.Variable(history_length, trainable=False, name="history_length")
    self.user_feature_names = tf.Variable([s.name for s in self._specs] or [""],
                                          trainable=False, dtype=tf.string,
                                          name="user_feature_names")
    self.num_user_features = tf.Variable(len(self._specs), trainable=False)

  def input_signature(self) -> dict:
    spec = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
            HISTORY: tf.TensorSpec([None, None], tf.string, name=HISTORY),
            "item_ids": tf.TensorSpec([None, None], tf.string, name="item_ids")}
    for s in self._specs:
      spec[s.name] = tf.TensorSpec([None], tf.string, name=s.name)
    return spec

  def score(self, inputs: dict) -> dict:
    history = self.item_lookup(inputs[HISTORY])
    # Keep the last history_length known-or-OOV entries, wherever the padding is.
    # Keep the last history_length entries, right-aligned (most recent last) as in
    # training, wherever the caller put the padding.
    kept = tf.ragged.boolean_mask(history, tf.not_equal(history, PAD))[:, -self._length:]
    history = tf.reverse(tf.reverse(kept, axis=[1]).to_tensor(
        default_value=PAD, shape=[None, self._length]), axis=[1])
    user = {"user_id": self.user_lookup(inputs["user_id"]), HISTORY: tf.cast(history, tf.int32)}
    for s in self._specs:
      raw = raw_feature_matrix_tf(inputs[s.name], s)
      user[s.name] = tf.cast(self.feature_lookups[s.name](raw), tf.int32)
    user["user_id"] = tf.cast(user["user_id"], tf.int32)
    item_ids = inputs["item_ids"]
    scores = self.model({"user": user, "item_id": tf.cast(self.item_lookup(item_ids), tf.int32)},
                        training=False)
    # Padding slots ('' candidate ids) can never outrank a real candidate.
    scores = tf.where(tf.equal(item_ids, ""), tf.constant(-np.inf, scores.dtype), scores)
    return {"scores": scores}


def save_ranking_model(model: RankingModel, data, history_length: int, out_dir: str) -> str:
  """Writes ``<out_dir>/ranking_model/``, a SavedModel of ``model`` for ``data``'s
  vocabularies, atomically (a temporary directory renamed into place).

  Signature ``serving_default``: ``user_id`` [B], ``history`` [B, L] ('' padded, most recent
  last), one [B] string per user feature (multi-valued ones as the raw space / '|'
  separated string, '' when missing) and ``item_ids`` [B, N] ('' pads) -> ``scores`` [B, N]
  (-inf at padding). Returns the SavedModel's path.
  """
  module = _RawRanker(model, data, history_length)
  spec = module.input_signature()
  fn = tf.function(module.score, input_signature=[spec])
  module.serve = fn
  path = os.path.join(out_dir, SAVED_MODEL_DIR)
  tmp = path + ".tmp"
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  tf.saved_model.save(module, tmp, signatures={"serving_default": fn.get_concrete_function()})
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)
  tf.io.gfile.rename(tmp, path)
  return path
