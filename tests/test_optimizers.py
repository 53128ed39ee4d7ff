"""Optimizers by name: clippy_adagrad's thresholds reach TFRS's ClippyAdagrad."""
import numpy as np
import pytest
import tensorflow as tf

from twotower.train.optimizers import make_optimizer


@pytest.mark.parametrize("relative", [0.1, 0.01])
def test_clippy_caps_each_update_by_the_relative_threshold(relative):
  weight = tf.Variable([1.0, -2.0, 4.0])
  optimizer = make_optimizer("clippy_adagrad", 10.0, clippy_thresholds={
      "variable_relative_threshold": relative, "accumulator_relative_threshold": 0.0,
      "absolute_threshold": 0.0})
  before = weight.numpy().copy()
  optimizer.apply_gradients([(tf.constant([1e3, -1e3, 1e3]), weight)])
  moved = np.abs(weight.numpy() - before)
  assert (moved > 0).all()
  assert (moved <= relative * np.abs(before) * (1 + 1e-5)).all(), moved


def test_unknown_optimizer_names_the_flag():
  with pytest.raises(ValueError, match="--optimizer"):
    make_optimizer("sgdd", 0.1)
