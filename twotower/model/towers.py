"""The user and item towers.

Both towers take dicts of integer id tensors (the encoding of ``twotower.data``): an entity
id, categorical features ([B]) and multi-valued features ([B, T], PAD = 0). The user tower
also pools the embeddings of the user's recent items *strictly before* the target
interaction (YouTube DNN). Outputs are L2-normalised so that dot products are cosines and
the temperature alone sets the softmax's sharpness.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from twotower.config import ModelConfig
from twotower.data import types
from twotower.data.features import FeatureSpec
from twotower.data.pipeline import HISTORY
from twotower.data.vocab import FIRST_OOV, PAD
from twotower.model.text_encoder import TextEncoder


def masked_mean(embeddings: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
  """Mean over axis 1 of [B, T, D] embeddings, ignoring PAD positions."""
  mask = tf.cast(tf.not_equal(ids, PAD), embeddings.dtype)[..., None]
  total = tf.reduce_sum(embeddings * mask, axis=1)
  return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class FeatureEmbeddings(tf_keras.layers.Layer):
  """Embeds every side feature of one entity kind and concatenates the results: a token
  through its embedding, a token sequence as the mean of its tokens', a text through the
  ``text`` config's encoder (without one, as the mean of its tokens': the ranking head)."""

  def __init__(self, specs: Sequence[FeatureSpec], dim: int,
               text: Optional[ModelConfig] = None, **kwargs):
    super().__init__(**kwargs)
    self._specs = [(s.name, s.kind) for s in specs]
    self._encoded = {s.name for s in specs if s.kind == types.TEXT and text is not None}
    self._embeddings = {
        s.name: (TextEncoder(len(s.vocab), text, name=f"{s.name}_text")
                 if s.name in self._encoded and text is not None else
                 tf_keras.layers.Embedding(len(s.vocab), dim, name=f"{s.name}_embedding"))
        for s in specs}

  def table(self, name: str) -> tf.Variable:
    """The embedding table over feature ``name``'s vocabulary (one row per token id)."""
    layer = self._embeddings[name]
    return (layer.embedding if isinstance(layer, TextEncoder) else layer).embeddings

  def call(self, features: dict) -> list[tf.Tensor]:
    out = []
    for name, kind in self._specs:
      ids = features[name]
      emb = self._embeddings[name](ids)
      pooled = kind != types.TOKEN and name not in self._encoded
      out.append(masked_mean(emb, ids) if pooled else emb)
    return out


def mlp(layer_sizes: Sequence[int], output_dim: int, dropout: float, name: str):
  layers = []
  for i, units in enumerate(layer_sizes):
    layers.append(tf_keras.layers.Dense(units, activation="relu", name=f"{name}_dense{i}"))
    if dropout > 0:
      layers.append(tf_keras.layers.Dropout(dropout))
  layers.append(tf_keras.layers.Dense(output_dim, name=f"{name}_output"))
  return tf_keras.Sequential(layers, name=name)


class _Tower(tf_keras.Model):
  """id embedding + side features (+ extra inputs) -> MLP -> (L2-normalised) embedding."""

  def __init__(self, key: str, id_embedding: tf_keras.layers.Embedding,
               specs: Sequence[FeatureSpec], config: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self._key = key
    self.id_embedding = id_embedding
    self.features = FeatureEmbeddings(specs, config.feature_embedding_dim, config)
    self.mlp = mlp(config.user_layers if key == "user_id" else config.item_layers,
                   config.embedding_dim, config.dropout, name=f"{self.name}_mlp")
    self._normalize = config.l2_normalize

  def extra_inputs(self, features: dict) -> list[tf.Tensor]:
    return []

  def embedding_ids(self, ids: tf.Tensor, training) -> tf.Tensor:
    """The rows of ``id_embedding`` that ``ids`` read (the ids themselves)."""
    return ids

  def call(self, features: dict, training=False) -> tf.Tensor:
    parts = [self.id_embedding(self.embedding_ids(features[self._key], training))]
    parts += self.features(features) + self.extra_inputs(features)
    out = self.mlp(tf.concat(parts, axis=-1), training=training)
    return tf.math.l2_normalize(out, axis=-1) if self._normalize else out


class ItemTower(_Tower):
  """With ``id_dropout`` > 0 (``--item_id_dropout``) items with no training events (cold
  items) read the OOV row, so a cold item is embedded from its features and text through a
  trained row rather than an untrained one of its own; the export's ``item_model`` reads
  unknown ids the same way.

  The OOV row is trained by dropping ids *per item, not per row*: item i's rows are dropped
  with probability min(1, id_dropout * m / count_i), m the mean count, so every item is
  dropped about equally often and the budget is id_dropout of the rows, as with row dropout.
  Row dropout (each row with probability id_dropout) trains the OOV row on the average
  *event*, a popular item, so every cold item inherited a popular item's prior: on the 200k
  item corpus, where 36% of the items have no training event, they crowded the top-k and
  test Recall@50 fell from 0.437 to 0.290 (experiments/RESULTS.md). Items seen as often as
  they would be cold are the tail, and that is what the OOV row learns here.
  """

  def __init__(self, num_items: int, specs: Sequence[FeatureSpec], config: ModelConfig,
               id_dropout: float = 0.0, train_counts=None, seed: int = 0):
    embedding = tf_keras.layers.Embedding(num_items, config.id_embedding_dim,
                                          name="item_id_embedding")
    super().__init__("item_id", embedding, specs, config, name="item_tower")
    self.trained_ids = None
    self._drop_rates = None
    self._dropout_rng = None
    if id_dropout > 0 and train_counts is not None:
      counts = np.asarray(train_counts, np.float64)
      trained = counts > 0
      # A variable, not a constant: checkpoints carry the mask of the data the weights were
      # trained on (the refit's is wider than its selection run's).
      self.trained_ids = tf.Variable(trained, trainable=False, name="trained_ids")
      mean = counts[trained].mean() if trained.any() else 1.0
      rates = np.where(trained, np.minimum(1.0, id_dropout * mean / np.maximum(counts, 1)), 0)
      self._drop_rates = tf.constant(rates, tf.float32)
      # Stateful and tracked, so the dropout draws are checkpointed and a resumed run
      # continues the same sequence.
      self._dropout_rng = tf.random.Generator.from_seed(seed)

  def embedding_ids(self, ids: tf.Tensor, training) -> tf.Tensor:
    if self.trained_ids is None:
      return ids
    oov = tf.constant(FIRST_OOV, ids.dtype)
    ids = tf.where(tf.gather(self.trained_ids, ids), ids, oov)
    if training and self._dropout_rng is not None:
      drop = self._dropout_rng.uniform(tf.shape(ids)) < tf.gather(self._drop_rates, ids)
      ids = tf.where(drop, oov, ids)
    return ids


class UserTower(_Tower):
  """Pools the history with the item tower's id embedding table: items a user consumed and
  items a user may consume live in one space, which matters most for sparse logs."""

  def __init__(self, num_users: int, specs: Sequence[FeatureSpec], config: ModelConfig,
               item_id_embedding: tf_keras.layers.Embedding):
    embedding = tf_keras.layers.Embedding(num_users, config.id_embedding_dim,
                                          name="user_id_embedding")
    super().__init__("user_id", embedding, specs, config, name="user_tower")
    self._item_id_embedding = item_id_embedding

  def extra_inputs(self, features: dict) -> list[tf.Tensor]:
    history = features[HISTORY]
    return [masked_mean(self._item_id_embedding(history), history)]
