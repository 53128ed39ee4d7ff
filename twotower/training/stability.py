"""The divergence guard: notice a blown-up step before it ruins the run.

Large recommenders diverge (Tang et al. 2023): a non-finite loss or gradient, or a loss far
above its recent average, usually means the weights are already damaged. The guard only
*detects*; the loop reacts by restoring the last good checkpoint (model, optimizer, queue,
frequency estimator), lowering the learning rate and skipping the batches since then
(train/runner.py). The step that never applies a non-finite update is the models' own:
model/guarded_step.py.
"""
from __future__ import annotations

import collections
import math
from typing import Optional


class DivergenceError(RuntimeError):
  """Training diverged more often than the guard allows."""


class DivergenceGuard:
  """``spike_factor`` > 1 (checked by the configs' validate())."""

  def __init__(self, spike_factor: float = 10.0, window: int = 50, min_steps: int = 20):
    self.spike_factor = spike_factor
    self.min_steps = min_steps
    self._recent: collections.deque[float] = collections.deque(maxlen=window)

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
