"""Optimizers by name.

``clippy_adagrad`` is TFRS's ClippyAdagrad (Tang et al. 2023, "Improving Training Stability
for Multitask Ranking Models in Recommender Systems"): Adagrad whose per-variable update is
scaled down so that no weight w moves by more than
``|w| * variable_relative_threshold + accumulator_relative_threshold / sqrt(accum) +
absolute_threshold`` in one step. The thresholds default to TFRS's own defaults (0.1, 0.0,
1e-7).
"""
from __future__ import annotations

from typing import Optional

import tensorflow_recommenders as tfrs
import tf_keras

OPTIMIZERS = ("adam", "adagrad", "clippy_adagrad")


def make_optimizer(name: str, learning_rate: float, global_clipnorm: float = 0.0,
                   clippy_thresholds: Optional[dict] = None):
  """``clippy_thresholds``: ClippyAdagrad's variable_relative_threshold,
  accumulator_relative_threshold and absolute_threshold (only for clippy_adagrad)."""
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
    return tfrs.experimental.optimizers.ClippyAdagrad(learning_rate, **(clippy_thresholds or {}),
                                                      **clip)
  raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
