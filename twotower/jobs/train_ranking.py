"""The workdir-level ranking job behind twotower-rank: options, the trained retrieval run.

It validates and saves the options as ``<workdir>/ranking/config.json``, reloads the
workdir's shipped retrieval model (the refit, unless --refit=none) and data, and hands them
to the ranking trainer (training/ranking.py). Rerunning it resumes the head's training.
"""
from __future__ import annotations

import os

from twotower.config import RankingConfig
from twotower.data import splits
from twotower.training import refit, runner
from twotower.training.ranking import RankingTrainer
from twotower.training.ranking_run import ranking_paths
from twotower.workdir import Workdir, load_trained


def train_ranking(workdir: str, **options) -> dict:
  """Trains (or resumes) the ranking head of a trained retrieval run; returns its log.

  ``options`` are RankingConfig fields (num_candidates, npratio, loss, rating_threshold,
  epochs...). Writes ``<workdir>/ranking/`` and the ``"ranking"`` entry of metrics.json.
  """
  config = RankingConfig.from_dict(options)
  config.validate()
  paths = ranking_paths(workdir)
  run = load_trained(workdir)
  os.makedirs(paths.root, exist_ok=True)
  runner.save_config(paths.config, config)
  log = RankingTrainer(run, workdir, config).run()
  refit_mode = run.config.train.refit
  if refit_mode != "none":   # say what the head's validation and test figures are worth
    trained_on = "+".join(splits.SPLIT_NAMES[s] for s in refit.REFIT_SPLITS[refit_mode])
    held_out = "the test split is" if refit_mode == "train_valid" else "neither split is"
    note = {"retrieval_model": (
        f"the refit on {trained_on}, which trained on the events these figures score: "
        f"{held_out} held out (experiments/heldout_protocol.py measures both stages on "
        f"unseen events)")}
    runner.MetricsRecord(Workdir(workdir).metrics, "ranking").merge_final(note)
    log["final"].update(note)
  return log
