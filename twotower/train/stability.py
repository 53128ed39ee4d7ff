"""The divergence guard: notice a blown-up step before it ruins the run, and the training
step that never applies a non-finite update.

Large recommenders diverge (Tang et al. 2023): a non-finite loss or gradient, or a loss far
above its recent average, usually means the weights are already damaged. The guard only
*detects*; the loop reacts by restoring the last good checkpoint (model, optimizer, queue,
frequency estimator), lowering the learning rate and skipping the batches since then.
"""
from __future__ import annotations

import collections
import math
from typing import Callable, Optional

import tensorflow as tf

from twotower.model.replicas import replica_context


class DivergenceError(RuntimeError):
  """Training diverged more often than the guard allows."""


class DivergenceGuard:

  def __init__(self, spike_factor: float = 10.0, window: int = 50, min_steps: int = 20):
    if spike_factor <= 1:
      raise ValueError(f"--divergence_spike_factor must be > 1, got {spike_factor}")
    self.spike_factor = spike_factor
    self.min_steps = min_steps
    self._recent = collections.deque(maxlen=window)

  def check(self, loss: float, grad_norm: float) -> Optional[str]:
    """Why this step looks diverged, or None. Healthy steps enter the moving average."""
    if not math.isfinite(loss):
      return f"non-finite loss ({loss})"
    if not math.isfinite(grad_norm):
      return f"non-finite gradient norm ({grad_norm})"
    if len(self._recent) >= self.min_steps:
      average = sum(self._recent) / len(self._recent)
      if loss > self.spike_factor * average:
        return f"loss spike: {loss:.4g} > {self.spike_factor:g} x moving average {average:.4g}"
    self._recent.append(loss)
    return None

  def reset(self) -> None:
    self._recent.clear()


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
