"""Optimizers by name: clippy_adagrad's thresholds reach TFRS's ClippyAdagrad."""
import numpy as np
import pytest
import tensorflow as tf

from twotower.training.optimizers import make_optimizer


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


def test_lazy_adam_updates_only_the_batch_rows_like_adam_does():
  table = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  lazy_var, dense_var = tf.Variable(table), tf.Variable(table)
  lazy, dense = make_optimizer("lazy_adam", 0.1), make_optimizer("adam", 0.1)
  for _ in range(3):    # row 4 twice: duplicates are summed
    for optimizer, var in ((lazy, lazy_var), (dense, dense_var)):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(var, [1, 4, 4]) ** 2)
      optimizer.apply_gradients([(tape.gradient(loss, var), var)])
  got, want = lazy_var.numpy(), dense_var.numpy()
  # Rows seen at every step: Adam's update exactly. Other rows: untouched.
  np.testing.assert_allclose(got[[1, 4]], want[[1, 4]], atol=1e-5)
  np.testing.assert_array_equal(got[[0, 2, 3, 5]], table[[0, 2, 3, 5]])
