"""The ranking head: re-scores a user's retrieved candidates with features a dot product lacks.

Second stage of the YouTube DNN / Wide & Deep lineage. The towers must score the whole
corpus with one dot product, so they cannot express interactions between a user feature and
an item feature (region x price, say) or between the candidate and individual history items.
For the few hundred retrieved candidates a heavier model is affordable: its input is the
user's and the item's own id / feature embeddings, the frozen tower embeddings, their dot
product and the candidate's similarity to each history item; DCN-v2 cross layers
(``tfrs.layers.dcn.Cross``) make explicit feature crosses, an MLP follows. The output is
``mlp(...) + w * dot`` with w initialised to the retrieval softmax's 1 / temperature, so an
untrained head already reproduces the retrieval order and training learns the correction.

This module is the model only; its raw-string SavedModel is model/ranking_export.py, the
serving adapter model/ranking_reranker.py, its training train/ranking.py.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from twotower.config import RankingConfig
from twotower.data.features import FeatureSpec
from twotower.data.pipeline import HISTORY
from twotower.data.vocab import PAD
from twotower.model.encoding import Encoder
from twotower.model.guarded_step import guarded_step
from twotower.model.towers import FeatureEmbeddings, masked_mean

RECENT = 3   # history positions that count as "recent" for the similarity features


def _scoring_mlp(layer_sizes: Sequence[int], dropout: float) -> tf_keras.Sequential:
  """ReLU layers and a zero-initialised output: the untrained head adds exactly 0 to the
  retrieval logit, so training starts from the retrieval order instead of from noise."""
  layers = []
  for i, units in enumerate(layer_sizes):
    layers.append(tf_keras.layers.Dense(units, activation="relu", name=f"rank_dense{i}"))
    if dropout > 0:
      layers.append(tf_keras.layers.Dropout(dropout))
  layers.append(tf_keras.layers.Dense(1, kernel_initializer="zeros", name="rank_output"))
  return tf_keras.Sequential(layers, name="rank_mlp")


class RankingModel(tfrs.Model):
  """Scores [B, N] candidates of B users; trained with ``tfrs.tasks.Ranking``.

  Inputs: ``{"user": <the user tower's feature dict>, "item_id": int [B, N]}``. Item side
  features and the frozen item embeddings are gathered from tables the model owns, so the
  same call serves training (ids from the pipeline) and export (ids from StringLookup).
  """

  def __init__(self, *, user_tower: tf_keras.Model, item_embeddings: np.ndarray,
               item_feature_values: dict, user_specs: Sequence[FeatureSpec],
               item_specs: Sequence[FeatureSpec], num_user_ids: int, num_item_ids: int,
               config: RankingConfig, retrieval_temperature: float = 1.0,
               item_counts: Optional[np.ndarray] = None):
    super().__init__()
    self.config = config
    # Frozen: the ranking head learns on top of the retrieval model, never changes it.
    self.user_tower = user_tower
    self.user_tower.trainable = False
    self.item_embeddings = tf.Variable(np.asarray(item_embeddings, np.float32),
                                       trainable=False, name="frozen_item_embeddings")
    self._item_tables = {k: tf.constant(v) for k, v in item_feature_values.items()}
    # Standardised log(1 + training count) per item id. The logQ-corrected towers score
    # popularity out of the dot product on purpose; the head may put back what predicts.
    counts = np.zeros(num_item_ids) if item_counts is None else np.asarray(item_counts, float)
    log_counts = np.log1p(counts)
    log_counts = (log_counts - log_counts.mean()) / max(float(log_counts.std()), 1e-6)
    self.item_popularity = tf.Variable(log_counts.astype(np.float32)[:, None],
                                       trainable=False, name="item_log_popularity")
    d = config.embedding_dim
    self.user_id_embedding = tf_keras.layers.Embedding(num_user_ids, d, name="rank_user_id")
    self.item_id_embedding = tf_keras.layers.Embedding(num_item_ids, d, name="rank_item_id")
    self.user_features = FeatureEmbeddings(user_specs, d, name="rank_user_features")
    if config.history_attention:
      self.attention = tf_keras.Sequential(
          [tf_keras.layers.Dense(32, activation="relu", name="attention_hidden"),
           tf_keras.layers.Dense(1, name="attention_logit")], name="history_attention")
    self.item_features = FeatureEmbeddings(item_specs, d, name="rank_item_features")
    self.crosses = [
        tfrs.layers.dcn.Cross(projection_dim=config.cross_projection_dim or None,
                              kernel_initializer="glorot_uniform", name=f"cross{i}")
        for i in range(config.cross_layers)]
    self.mlp = _scoring_mlp(config.layers, config.dropout)
    self.dot_weight = tf.Variable(
        1.0 / retrieval_temperature if config.residual_dot else 0.0,
        trainable=config.residual_dot, dtype=tf.float32, name="dot_weight")
    if config.loss == "softmax":
      # Listwise (NRMS): the positive competes with its 1 + npratio list.
      loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
      loss = tf_keras.losses.BinaryCrossentropy(from_logits=True)
    self.task = tfrs.tasks.Ranking(loss=loss)

  def call(self, features: dict, training=False) -> tf.Tensor:
    user, item_ids = features["user"], features["item_id"]
    batch, n = tf.shape(item_ids)[0], tf.shape(item_ids)[1]
    flat = tf.reshape(item_ids, [-1])
    history = user[HISTORY]

    user_frozen = tf.stop_gradient(self.user_tower(user, training=False))      # [B, D]
    item_frozen = tf.gather(self.item_embeddings, flat)                         # [BN, D]
    user_frozen_rep = tf.repeat(user_frozen, n, axis=0)
    dot = tf.reduce_sum(user_frozen_rep * item_frozen, axis=-1, keepdims=True)

    history_emb = self.item_id_embedding(history)                               # [B, L, d]
    user_parts = self.user_features(user) + [masked_mean(history_emb, history)]
    item_dict = {"item_id": flat}
    item_dict.update({k: tf.gather(t, flat) for k, t in self._item_tables.items()})
    item_id_emb = self.item_id_embedding(flat)
    item_parts = self.item_features(item_dict)
    if self.config.id_embeddings:
      user_parts.append(self.user_id_embedding(user["user_id"]))
      item_parts.append(item_id_emb)
    parts = [tf.repeat(tf.concat(user_parts, -1), n, axis=0), user_frozen_rep, item_frozen,
             user_frozen_rep * item_frozen, dot]
    if item_parts:
      parts.append(tf.concat(item_parts, -1))
    if self.config.popularity:
      parts.append(tf.gather(self.item_popularity, flat))
    if self.config.history_similarity:
      parts += self._history_similarity(item_frozen, history, batch, n)
    if self.config.history_attention:
      parts.append(self._attend(item_id_emb, history_emb, history, batch, n))
    x0 = tf.concat(parts, axis=-1)
    x = x0
    for cross in self.crosses:
      x = cross(x0, x)
    logit = self.mlp(x, training=training)[:, 0] + self.dot_weight * dot[:, 0]
    return tf.reshape(logit, [batch, n])

  def _history_similarity(self, item_frozen, history, batch, n) -> list[tf.Tensor]:
    """Candidate . history item in the frozen item space (max, mean, the latest item, the
    RECENT latest): item-to-item evidence that the user embedding averages away."""
    history_emb = tf.gather(self.item_embeddings, history)                     # [B, L, D]
    candidates = tf.reshape(item_frozen, [batch, n, -1])
    sims = tf.einsum("bnd,bld->bnl", candidates, history_emb)
    valid = tf.not_equal(history, PAD)[:, None, :]
    count = tf.reduce_sum(tf.cast(valid, sims.dtype), axis=-1)
    has_history = count > 0
    max_sim = tf.where(has_history,
                       tf.reduce_max(tf.where(valid, sims, -1e9), axis=-1), 0.0)
    masked = tf.where(valid, sims, 0.0)
    mean_sim = tf.reduce_sum(masked, axis=-1) / tf.maximum(count, 1.0)
    # The history is right-aligned, most recent last: the latest items carry the session.
    recent = tf.reduce_sum(masked[:, :, -RECENT:], axis=-1) / tf.maximum(
        tf.reduce_sum(tf.cast(valid[:, :, -RECENT:], sims.dtype), axis=-1), 1.0)
    return [tf.reshape(f, [-1, 1]) for f in (max_sim, mean_sim, masked[:, :, -1], recent)]

  def _attend(self, item_id_emb, history_emb, history, batch, n) -> tf.Tensor:
    """DIN (Zhou et al. 2018): the history pooled with weights that depend on the
    candidate, so one user can look different to different candidates."""
    length, dim = tf.shape(history)[1], tf.shape(history_emb)[-1]
    c = tf.broadcast_to(tf.reshape(item_id_emb, [batch, n, 1, dim]), [batch, n, length, dim])
    h = tf.broadcast_to(history_emb[:, None], [batch, n, length, dim])
    logits = self.attention(tf.concat([c, h, c * h, c - h], axis=-1))[..., 0]   # [B, N, L]
    valid = tf.not_equal(history, PAD)[:, None, :]
    weights = tf.where(valid, tf.nn.softmax(tf.where(valid, logits, -1e9), axis=-1), 0.0)
    pooled = tf.einsum("bnl,bld->bnd", weights, history_emb)
    return tf.reshape(pooled, [-1, dim])

  def compute_loss(self, features, training=False) -> tf.Tensor:
    scores = self(features, training=training)
    return self.task(labels=features["label"], predictions=scores, training=training,
                     compute_metrics=False)

  def train_step(self, features):
    """One step; non-finite loss or gradients change nothing (the loop's guard reacts)."""
    return guarded_step(self, lambda: self.compute_loss(features, training=True))


def build_ranking_model(run, config: RankingConfig) -> RankingModel:
  """A ranking head on top of a trained retrieval run's frozen towers (``run``: a
  ``workdir.TrainedRun``, or anything with its config, data and model), variables built."""
  data = run.data
  tf_keras.utils.set_random_seed(config.seed)
  # Every item id, padding and OOV rows included: the table is indexed by vocabulary id.
  item_embeddings = Encoder(run.model, data).items(np.arange(len(data.item_vocab)))
  counts = np.zeros(len(data.item_vocab), np.int64)
  counts[data.item_vocab.offset:] = data.train_item_counts()
  model = RankingModel(
      user_tower=run.model.user_tower, item_embeddings=item_embeddings,
      item_feature_values=data.item_features.values, user_specs=data.user_features.specs,
      item_specs=data.item_features.specs, num_user_ids=len(data.user_vocab),
      num_item_ids=len(data.item_vocab), config=config,
      retrieval_temperature=run.config.loss.temperature, item_counts=counts)
  model(_dummy_inputs(data, run.config.data.history_length))
  return model


def _dummy_inputs(data, history_length: int) -> dict:
  user = {"user_id": tf.zeros([1], tf.int32),
          HISTORY: tf.zeros([1, history_length], tf.int32)}
  for name, table in data.user_features.values.items():
    user[name] = tf.zeros((1,) + table.shape[1:], tf.int32)
  return {"user": user, "item_id": tf.zeros([1, 1], tf.int32)}
