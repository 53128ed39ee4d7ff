"""The twotower-evaluate job: a finished run's best model measured on validation and test."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from twotower.data import splits
from twotower.model.encoding import Encoder
from twotower.training import loop, refit, runner
from twotower.workdir import Workdir, load_trained


def evaluate_workdir(workdir: str, ks: Sequence[int] | None = None) -> dict:
  """Exact full-corpus metrics (twotower.evaluate) of the shipped model on validation and
  test, and of the most-popular baseline on test; after a refit, ``"model"`` says which of
  the figures the model has trained on.

  Also stored under ``evaluation`` in the run's metrics.json, next to what training wrote.
  """
  run = load_trained(workdir)
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
  if config.train.refit != "none":
    seen = refit.REFIT_SPLITS[config.train.refit]
    result["model"] = (
        f"the shipped model, refit on {'+'.join(splits.SPLIT_NAMES[s] for s in seen)}: "
        + ("its validation figure is not held out; test is"
           if config.train.refit == "train_valid" else
           "neither figure is held out (the selection model's held-out figures are "
           "metrics.json's final valid/test)"))
  runner.MetricsRecord(Workdir(workdir).metrics, "evaluation").write(result)
  return result
