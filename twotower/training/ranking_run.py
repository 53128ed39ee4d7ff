"""A workdir's ranking head: where its files are, reloading it, exporting it.

The workdir-level twin of ``workdir.load_trained`` for the head that twotower-rank trains;
the array-level model, SavedModel and training live in model/ranking*.py and
train/ranking.py.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from twotower.config import RankingConfig
from twotower.model.ranking import RankingModel, build_ranking_model
from twotower.model.ranking_export import save_ranking_model
from twotower.model.ranking_reranker import SAVED_MODEL_DIR  # noqa: F401  (export's manifest)
from twotower.workdir import TrainedRun, Workdir, load_trained, require, restore_retrieval_model


@dataclasses.dataclass(frozen=True)
class RankingPaths:
  """``<workdir>/ranking/``: the head's config, checkpoints, best weights, TensorBoard."""
  root: str

  config = property(lambda self: os.path.join(self.root, "config.json"))
  checkpoints = property(lambda self: os.path.join(self.root, "checkpoints"))
  best = property(lambda self: os.path.join(self.root, "best"))
  tensorboard = property(lambda self: os.path.join(self.root, "tensorboard"))


def ranking_paths(workdir: str) -> RankingPaths:
  return RankingPaths(Workdir(workdir).ranking)


def has_ranking_head(workdir: str) -> bool:
  return os.path.exists(ranking_paths(workdir).best + ".index")


def load_ranking(workdir: str, run: Optional[TrainedRun] = None
                 ) -> tuple[TrainedRun, RankingConfig, RankingModel]:
  """(TrainedRun, RankingConfig, RankingModel with the best ranking epoch's weights).

  ``run``: an already loaded ``TrainedRun`` of this workdir, to skip preparing the data
  again; its model is left alone (the head gets its own copy of the towers).
  """
  paths = ranking_paths(workdir)
  require(workdir, (paths.config, paths.best + ".index"), "trained ranking head",
          "twotower-rank")
  if run is None:
    run = load_trained(workdir)
  else:
    run = dataclasses.replace(
        run, model=restore_retrieval_model(workdir, run.data, run.config))
  config = RankingConfig.load(paths.config)
  model = build_ranking_model(run, config)
  # The checkpoint holds the frozen towers and item table the head was trained with, so the
  # head stays self-consistent even if the retrieval model is retrained later.
  tf.train.Checkpoint(model=model).read(paths.best).expect_partial()
  return run, config, model


def export_ranking_model(workdir: str, out_dir: str, run: Optional[TrainedRun] = None) -> str:
  """Writes ``<out_dir>/ranking_model/``, the workdir's best ranking head as a raw-string
  SavedModel (signature: model/ranking_export.save_ranking_model); returns its path.
  ``run``: see ``load_ranking``."""
  run, _, model = load_ranking(workdir, run)
  return save_ranking_model(model, run.data, run.config.data.history_length, out_dir)
