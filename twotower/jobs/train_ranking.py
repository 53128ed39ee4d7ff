"""The workdir-level ranking job behind twotower-rank: options, the trained retrieval run.

It validates and saves the options as ``<workdir>/ranking/config.json``, reloads the
workdir's shipped retrieval model (the refit, unless --refit=none) and data (or takes them
from the caller), and hands them to the ranking trainer (training/ranking.py). Rerunning it
resumes the head's training. Past ``ann_min_items`` the head's candidates are mined through a
ScaNN searcher: the workdir's index when it indexes exactly this corpus, else one built for
the mining.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from absl import logging

from twotower import index as index_lib
from twotower.config import RankingConfig
from twotower.data.histories import latest_histories
from twotower.model.encoding import Encoder
from twotower.training import refit, runner
from twotower.training.ranking import RankingTrainer
from twotower.training.ranking_mining import Search
from twotower.training.ranking_run import ranking_paths
from twotower.workdir import TrainedRun, Workdir, load_trained, restore_retrieval_model


def train_ranking(workdir: str, run: Optional[TrainedRun] = None, **options) -> dict:
  """Trains (or resumes) the ranking head of a trained retrieval run; returns its log.

  ``options`` are RankingConfig fields (num_candidates, npratio, loss, rating_threshold,
  epochs...). ``run``: this workdir's already loaded ``TrainedRun`` (the pipeline's), to
  skip loading the data again; the head gets its own copy of the towers. Writes
  ``<workdir>/ranking/`` and the ``"ranking"`` entry of metrics.json.
  """
  config = RankingConfig.from_dict(options)
  config.validate()
  paths = ranking_paths(workdir)
  if run is None:
    run = load_trained(workdir)
  else:
    run = dataclasses.replace(run, model=restore_retrieval_model(workdir, run.data, run.config))
  os.makedirs(paths.root, exist_ok=True)
  runner.save_config(paths.config, config)
  use_ann = 0 < config.ann_min_items <= run.data.num_items
  make_search = (lambda corpus: ann_search(workdir, run, corpus)) if use_ann else None
  log = RankingTrainer(run, workdir, config, make_search=make_search).run()
  refit_mode = run.config.train.refit
  if refit_mode != "none":   # say what the head's validation and test figures are worth
    trained_on = refit.trained_on(refit_mode)
    held_out = "the test split is" if refit_mode == "train_valid" else "neither split is"
    note = {"retrieval_model": (
        f"the refit on {trained_on}, which trained on the events these figures score: "
        f"{held_out} held out (experiments/heldout_protocol.py measures both stages on "
        f"unseen events)")}
    runner.MetricsRecord(Workdir(workdir).metrics, "ranking").merge_final(note)
    log["final"].update(note)
  return log


def ann_search(workdir: str, run: TrainedRun, corpus: np.ndarray,
               num_tuning_queries: int = 1000, seed: int = 0) -> Search:
  """Top-N through a ScaNN searcher over ``corpus``: the workdir's index if it indexes
  exactly these vectors (twotower-index ran on this model), else one built and tuned here
  (recall@10 0.95 on real user queries, as twotower-index does; deeper N reorders more)."""
  index = None
  if os.path.exists(os.path.join(Workdir(workdir).index, index_lib.INDEX_JSON)):
    try:
      found = index_lib.load_index(Workdir(workdir).index)
      if found.kind == index_lib.SCANN and found.fingerprint == index_lib.fingerprint(corpus):
        index = found
        logging.info("mining through the workdir's ScaNN index")
    except (index_lib.IntegrityError, OSError, ValueError) as e:
      logging.info("not reusing %s for mining: %s", Workdir(workdir).index, e)
  if index is None:
    users, history = latest_histories(run.data, run.config.data.history_length)
    pick = np.random.default_rng(seed).permutation(len(users))[:num_tuning_queries]
    queries = Encoder(run.model, run.data).users(users[pick], history[pick])
    index = index_lib.build_searcher(corpus, sample_queries=queries, brute_force_below=0)
  return lambda queries, k, exclude: index.search(queries, k, exclude=exclude)[0]
