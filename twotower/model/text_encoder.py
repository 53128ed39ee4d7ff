"""Text encoders: a [B, T] matrix of token ids (PAD = 0) -> one [B, text_dim] vector.

``mean`` averages token embeddings (the bag-of-words baseline); ``cnn`` is NPA / NAML's
title encoder (a 1-D convolution over token windows, max-pooled over the text); and
``attention`` is NRMS's news encoder (multi-head self-attention over the tokens, then
additive-attention pooling). Padding never contributes, and an empty text encodes to zeros,
so an item without a title is told apart from one with an unknown word. Built from Keras
layers (Embedding, Conv1D, MultiHeadAttention, LayerNormalization, Dense); the one piece
written here is the pooling: Keras's ``AdditiveAttention`` scores a query sequence against
a value sequence (Bahdanau), not a learned query against one sequence as NRMS pools.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras

from twotower.config import ModelConfig
from twotower.data.vocab import PAD

_NEG = -1e9


class AdditivePooling(tf_keras.layers.Layer):
  """NRMS's additive attention: weights softmax(q . tanh(W h_t + b)) over unmasked tokens."""

  def __init__(self, hidden: int, **kwargs):
    super().__init__(**kwargs)
    self.projection = tf_keras.layers.Dense(hidden, activation="tanh", name="projection")
    self.query = tf_keras.layers.Dense(1, use_bias=False, name="query")

  def call(self, states: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    scores = tf.squeeze(self.query(self.projection(states)), -1)          # [B, T]
    scores = tf.where(mask, scores, tf.cast(_NEG, scores.dtype))
    weights = tf.nn.softmax(scores, axis=-1)
    return tf.reduce_sum(states * weights[..., None], axis=1)


class TextEncoder(tf_keras.layers.Layer):
  """Token ids of one text feature -> a vector (``--text_encoder``, ``--text_*``)."""

  def __init__(self, vocab_size: int, config: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self.kind = config.text_encoder
    dim = config.text_dim
    self.embedding = tf_keras.layers.Embedding(vocab_size, dim, name="tokens")
    self.blocks: list = []
    if self.kind == "cnn":
      self.blocks = [tf_keras.layers.Conv1D(dim, 3, padding="same", activation="relu",
                                            name=f"conv{i}") for i in range(config.text_layers)]
    elif self.kind == "attention":
      # Residual + layer norm around each attention layer, so stacked layers train; with one
      # layer this is NRMS's encoder plus that residual.
      self.blocks = [(tf_keras.layers.MultiHeadAttention(config.text_heads,
                                                         dim // config.text_heads,
                                                         name=f"attention{i}"),
                      tf_keras.layers.LayerNormalization(name=f"norm{i}"))
                     for i in range(config.text_layers)]
      self.pooling = AdditivePooling(dim, name="pooling")
    elif self.kind != "mean":
      raise ValueError(f"--text_encoder must be mean, cnn or attention, got {self.kind!r}")

  def call(self, ids: tf.Tensor) -> tf.Tensor:
    mask = tf.not_equal(ids, PAD)                                          # [B, T]
    present = tf.cast(tf.reduce_any(mask, axis=1, keepdims=True), self.compute_dtype)
    x = self.embedding(ids)
    weights = tf.cast(mask, x.dtype)[..., None]
    if self.kind == "mean":
      pooled = tf.reduce_sum(x * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
    elif self.kind == "cnn":
      for conv in self.blocks:
        x = conv(x) * weights
      pooled = tf.reduce_max(tf.where(mask[..., None], x, tf.cast(_NEG, x.dtype)), axis=1)
    else:
      pair_mask = mask[:, :, None] & mask[:, None, :]
      for attention, norm in self.blocks:
        x = norm(x + attention(x, x, attention_mask=pair_mask))
      pooled = self.pooling(x, mask)
    return pooled * present
