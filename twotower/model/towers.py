"""The user and item towers.

Both towers take dicts of integer id tensors (the encoding of ``twotower.data``): an entity
id, categorical features ([B]) and multi-valued features ([B, T], PAD = 0). The user tower
also pools the embeddings of the user's recent items *strictly before* the target
interaction (YouTube DNN). Outputs are L2-normalised so that dot products are cosines and
the temperature alone sets the softmax's sharpness.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras

from twotower.config import ModelConfig
from twotower.data import types
from twotower.data.features import FeatureSpec
from twotower.data.pipeline import HISTORY
from twotower.data.vocab import PAD


def masked_mean(embeddings: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
  """Mean over axis 1 of [B, T, D] embeddings, ignoring PAD positions."""
  mask = tf.cast(tf.not_equal(ids, PAD), embeddings.dtype)[..., None]
  total = tf.reduce_sum(embeddings * mask, axis=1)
  return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class FeatureEmbeddings(tf_keras.layers.Layer):
  """Embeds every side feature of one entity kind and concatenates the results."""

  def __init__(self, specs: Sequence[FeatureSpec], dim: int, **kwargs):
    super().__init__(**kwargs)
    self._specs = [(s.name, s.kind) for s in specs]
    self._embeddings = {
        s.name: tf_keras.layers.Embedding(len(s.vocab), dim, name=f"{s.name}_embedding")
        for s in specs}

  def call(self, features: dict) -> list[tf.Tensor]:
    out = []
    for name, kind in self._specs:
      ids = features[name]
      emb = self._embeddings[name](ids)
      out.append(masked_mean(emb, ids) if kind == types.TOKEN_SEQ else emb)
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
    self.features = FeatureEmbeddings(specs, config.feature_embedding_dim)
    self.mlp = mlp(config.user_layers if key == "user_id" else config.item_layers,
                   config.embedding_dim, config.dropout, name=f"{self.name}_mlp")
    self._normalize = config.l2_normalize

  def extra_inputs(self, features: dict) -> list[tf.Tensor]:
    return []

  def call(self, features: dict, training=False) -> tf.Tensor:
    parts = [self.id_embedding(features[self._key])]
    parts += self.features(features) + self.extra_inputs(features)
    out = self.mlp(tf.concat(parts, axis=-1), training=training)
    return tf.math.l2_normalize(out, axis=-1) if self._normalize else out


class ItemTower(_Tower):

  def __init__(self, num_items: int, specs: Sequence[FeatureSpec], config: ModelConfig):
    embedding = tf_keras.layers.Embedding(num_items, config.id_embedding_dim,
                                          name="item_id_embedding")
    super().__init__("item_id", embedding, specs, config, name="item_tower")


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
