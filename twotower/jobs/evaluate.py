"""The twotower-evaluate job: a finished run's best model measured on validation and test."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from twotower.data import splits
from twotower.model.encoding import Encoder
from twotower.training import loop, refit, runner
from twotower.workdir import TrainedRun, Workdir, load_trained, restore_retrieval_model


def evaluate_workdir(workdir: str, ks: Sequence[int] | None = None,
                     run: Optional[TrainedRun] = None) -> dict:
  """Exact full-corpus metrics (twotower.evaluate) of the best model on validation and test,
  and of the most-popular baseline on test. After a refit that is the selection model, whose
  validation and test events are held out (the refit trained on them); ``"model"`` says so.
  Each split's figures hold its ``cold`` and ``warm`` slices: the targets whose item has no
  event in the training split (what that model trained on), and the others.

  Also stored under ``evaluation`` in the run's metrics.json, next to what training wrote.
  ``run``: this workdir's already loaded ``TrainedRun``.
  """
  run = run or load_trained(workdir)
  config, model, wd = run.config, run.model, Workdir(workdir)
  if ks:
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, eval_ks=tuple(int(k) for k in ks)))
  note = None
  if config.train.refit != "none" and os.path.exists(wd.selection_best + ".index"):
    # The shipped refit trained on these splits; the selection model's figures are held out.
    model = restore_retrieval_model(workdir, run.data, config, wd.selection_best)
    trained_on = refit.trained_on(config.train.refit)
    note = (f"the selection model (checkpoints/selection_best), for which validation and test "
            f"are held out; the shipped model (checkpoints/best) is its refit on {trained_on}")
  encoder = Encoder(model, run.data)
  result: dict = {
      "valid": loop.split_metrics(model, run.data, splits.VALID, config, encoder),
      "test": loop.split_metrics(model, run.data, splits.TEST, config, encoder),
      "most_popular_test": loop.most_popular_metrics(run.data, splits.TEST, config),
  }
  if note:
    result["model"] = note
  runner.MetricsRecord(Workdir(workdir).metrics, "evaluation").write(result)
  return result
