"""The twotower-evaluate job: a finished run's best model measured on validation and test."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from twotower.data import splits
from twotower.model.encoding import Encoder
from twotower.training import loop, runner
from twotower.workdir import TrainedRun, Workdir, load_trained


def evaluate_workdir(workdir: str, ks: Sequence[int] | None = None,
                     run: Optional[TrainedRun] = None) -> dict:
  """Exact full-corpus metrics (twotower.evaluate) of the best model on validation and test,
  and of the most-popular baseline on test.

  Also stored under ``evaluation`` in the run's metrics.json, next to what training wrote.
  ``run``: this workdir's already loaded ``TrainedRun``.
  """
  run = run or load_trained(workdir)
  config = run.config
  if ks:
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, eval_ks=tuple(int(k) for k in ks)))
  encoder = Encoder(run.model, run.data)
  result = {
      "valid": loop.split_metrics(run.model, run.data, splits.VALID, config, encoder),
      "test": loop.split_metrics(run.model, run.data, splits.TEST, config, encoder),
      "most_popular_test": loop.most_popular_metrics(run.data, splits.TEST, config),
  }
  runner.MetricsRecord(Workdir(workdir).metrics, "evaluation").write(result)
  return result
