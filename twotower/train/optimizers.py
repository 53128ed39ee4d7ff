"""Optimizers by name."""
from __future__ import annotations

import tensorflow_recommenders as tfrs
import tf_keras

OPTIMIZERS = ("adam", "adagrad", "clippy_adagrad")


def make_optimizer(name: str, learning_rate: float):
  if learning_rate <= 0:
    raise ValueError(f"--learning_rate must be positive, got {learning_rate}")
  if name == "adam":
    return tf_keras.optimizers.Adam(learning_rate)
  if name == "adagrad":
    return tf_keras.optimizers.Adagrad(learning_rate)
  if name == "clippy_adagrad":
    return tfrs.experimental.optimizers.ClippyAdagrad(learning_rate)
  raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
