"""The optimizer step both models train with: it never applies a non-finite update.

The training skeleton's divergence guard (train/stability.py) decides what to do about such a
step; this module only keeps it from touching the weights, so ``model/`` needs nothing from
``train/``.
"""
from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from twotower.model.replicas import replica_context


def guarded_step(model, loss_fn: Callable[[], tf.Tensor],
                 on_apply: Optional[Callable[[], None]] = None) -> dict:
  """One optimizer step of ``model`` on ``loss_fn()`` plus its regularization losses.

  A step whose loss or gradients are not finite changes nothing (``on_apply``, e.g. the
  queue's enqueue, runs only with the update); the returned ``loss`` and ``grad_norm`` let
  the loop's DivergenceGuard react. Under a distribution strategy the update is applied
  unconditionally: apply_gradients synchronises replicas, which TF forbids inside a
  tf.cond, so there the guard's checkpoint restore is the only protection.
  """
  with tf.GradientTape() as tape:
    loss = loss_fn()
    regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
    total = loss + regularization
  variables = model.trainable_variables
  gradients = tape.gradient(total, variables)
  grad_norm = tf.linalg.global_norm(gradients)
  finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(total)

  def apply():
    model.optimizer.apply_gradients(zip(gradients, variables))
    if on_apply is not None:
      on_apply()
    return tf.constant(True)

  if replica_context() is None:
    tf.cond(finite, apply, lambda: tf.constant(False))
  else:
    apply()
  return {"loss": loss, "regularization_loss": regularization, "total_loss": total,
          "grad_norm": grad_norm}
