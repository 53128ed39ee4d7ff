"""The ranking-head trainer: what the training skeleton (train/runner.py) runs for the head.

It supplies the batches of mined examples (train/ranking_mining.py, train/ranking_examples.py),
the head's step and its held-out evaluation (train/ranking_eval.py); the checkpoints, resume,
divergence guard, early stopping and plateau schedule on a validation metric are the
skeleton's. Everything lands in ``<workdir>/ranking/`` and under ``"ranking"`` in
``metrics.json``. The workdir-level job is jobs/train_ranking.py.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from twotower.config import RankingConfig
from twotower.data import splits
from twotower.errors import ConfigError
from twotower.model.encoding import Encoder
from twotower.model.ranking import build_ranking_model
from twotower.training import runner
from twotower.training.optimizers import make_optimizer
from twotower.training.ranking_eval import Scorer, held_out_metrics, held_out_set
from twotower.training.ranking_examples import ranking_dataset
from twotower.training.ranking_mining import (
  Search,
  exact_search,
  holdout_users,
  mine_training_examples,
  sample_negatives,
)
from twotower.training.ranking_run import ranking_paths
from twotower.workdir import TrainedRun, Workdir


class RankingTrainer(runner.Runner):
  """The ranking head's data, step and evaluation; the loop is runner.Runner's."""
  shown_metrics = ("auc", "gauc", "ndcg@10", "two_stage_ndcg@10", "retrieval_ndcg@10")

  def __init__(self, run: TrainedRun, workdir: str, config: RankingConfig,
               make_search: Optional[Callable[[np.ndarray], Search]] = None):
    """``make_search(corpus)``: how mining and the held-out sets find each query's top-N
    (default: exact)."""
    self.data, self.config = run.data, config
    self.history_length = run.config.data.history_length
    self.id_dropout = (config.id_dropout if config.id_dropout >= 0
                       else run.config.model.id_dropout)
    encoder = Encoder(run.model, run.data)
    corpus = encoder.items()
    started = time.time()
    search = make_search(corpus) if make_search is not None else exact_search(corpus)
    self.examples = mine_training_examples(run.data, encoder, corpus, config,
                                           self.history_length, search=search)
    holdout = holdout_users(run.data, config) if config.examples == "valid" else None
    self.valid = held_out_set(run.data, encoder, corpus, splits.VALID, config,
                              self.history_length, config.seed, users=holdout, search=search)
    self.test = held_out_set(run.data, encoder, corpus, splits.TEST, config,
                             self.history_length, config.seed, search=search)
    logging.info("mined top-%d candidates for %d training interactions in %.1fs",
                 config.num_candidates, len(self.examples.events), time.time() - started)
    model = build_ranking_model(run, config)
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.global_clipnorm)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    paths = ranking_paths(workdir)
    self._start(model, optimizer, runner.LoopSettings.of(config),
                runner.RunFiles(checkpoints=paths.checkpoints, best=paths.best,
                                tensorboard=paths.tensorboard,
                                metrics=Workdir(workdir).metrics, section="ranking",
                                name="ranking ", summary_prefix="ranking/"),
                header={"config": dataclasses.asdict(config),
                        "examples": int(len(self.examples.events)),
                        "candidate_search": "exact" if make_search is None else "ann"},
                steps_per_epoch=-(-len(self.examples.events) // config.batch_size))
    self.scorer = Scorer(self.model, self.data)
    self.train_step = tf.function(self.model.train_step, reduce_retracing=True)
    self._negatives = np.zeros((0, config.npratio), np.int64)   # set by begin_epoch

  def begin_epoch(self, epoch: int) -> None:
    """The epoch's negatives, drawn afresh from each example's candidates."""
    ev, c = self.data.events, self.config
    rng = np.random.default_rng([c.seed, epoch, 11])
    self._negatives = sample_negatives(self.examples.candidates, ev.user[self.examples.events],
                                       self.examples.known, self.data.num_items, c.npratio,
                                       c.random_negative_fraction, rng)

  def dataset(self, epoch: int, skip_batches: int):
    c = self.config
    return ranking_dataset(self.data, self.examples, self._negatives, batch_size=c.batch_size,
                           history_length=self.history_length, seed=c.seed, epoch=epoch,
                           id_dropout=self.id_dropout, skip_batches=skip_batches)

  def batch_examples(self, batch, batch_index: int) -> int:
    return int(batch["item_id"].shape[0])

  def epoch_extras(self) -> dict:
    return {"dot_weight": float(self.model.dot_weight.numpy())}

  def evaluate(self) -> dict:
    valid = held_out_metrics(self.scorer, self.valid, self.data.num_items)
    metric = self.config.early_stopping_metric
    if metric not in valid:
      raise ConfigError(f"--ranking_early_stopping_metric must be one of "
                        f"{sorted(k for k in valid if k != 'num_users')}, got {metric!r}")
    return valid

  def final_metrics(self, valid: Optional[dict]) -> dict:
    if valid is None:
      valid = held_out_metrics(self.scorer, self.valid, self.data.num_items)
    return {"valid": valid,
            "test": held_out_metrics(self.scorer, self.test, self.data.num_items)}
