"""The workdir-level ranking job behind twotower-rank: options, the trained retrieval run.

It validates and saves the options as ``<workdir>/ranking/config.json``, reloads the
workdir's best retrieval model and data, and hands them to the ranking trainer
(train/ranking.py). Rerunning it resumes the head's training.
"""
from __future__ import annotations

import os

from twotower.config import RankingConfig
from twotower.training import runner
from twotower.training.ranking import RankingTrainer
from twotower.training.ranking_run import ranking_paths
from twotower.workdir import load_trained


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
  return RankingTrainer(run, workdir, config).run()
