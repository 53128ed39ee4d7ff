"""Optimizers by name."""
from __future__ import annotations

import tensorflow_recommenders as tfrs
import tf_keras

OPTIMIZERS = ("adam", "adagrad", "clippy_adagrad")


def make_optimizer(name: str, learning_rate: float, global_clipnorm: float = 0.0):
  if learning_rate <= 0:
    raise ValueError(f"--learning_rate must be positive, got {learning_rate}")
  if global_clipnorm < 0:
    raise ValueError(f"--global_clipnorm must be >= 0, got {global_clipnorm}")
  clip = {"global_clipnorm": global_clipnorm} if global_clipnorm else {}
  if name == "adam":
    return tf_keras.optimizers.Adam(learning_rate, **clip)
  if name == "adagrad":
    return tf_keras.optimizers.Adagrad(learning_rate, **clip)
  if name == "clippy_adagrad":
    return tfrs.experimental.optimizers.ClippyAdagrad(learning_rate, **clip)
  raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
