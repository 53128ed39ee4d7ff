"""One run's directory: its layout (pinned in docs/design.md, "Artifact layout") and
reloading what training left.

Downstream jobs (evaluate, rank, index, export) load the prepared data that training
stored in ``prepared/`` (data/prepared_store.py), checked against the config and the input
files, so a changed input file is an error rather than a silently different id mapping. A
run from before the store is prepared again from its config and checked against the saved
vocabularies.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tf_keras

from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.data import prepared_store, types
from twotower.data.features import SavedVocabularies
from twotower.data.vocab import Vocabulary


@dataclasses.dataclass
class Workdir:
  root: str

  def path(self, *parts) -> str:
    return os.path.join(self.root, *parts)

  config = property(lambda self: self.path("config.json"))
  metrics = property(lambda self: self.path("metrics.json"))
  checkpoints = property(lambda self: self.path("checkpoints"))
  best = property(lambda self: self.path("checkpoints", "best"))   # the shipped model
  selection_best = property(lambda self: self.path("checkpoints", "selection_best"))
  refit = property(lambda self: self.path("refit"))
  tensorboard = property(lambda self: self.path("tensorboard"))
  vocab = property(lambda self: self.path("vocab"))
  prepared = property(lambda self: self.path("prepared"))
  index = property(lambda self: self.path("index"))
  ranking = property(lambda self: self.path("ranking"))
  export = property(lambda self: self.path("export"))


@dataclasses.dataclass
class TrainedRun:
  config: Config
  data: prepare_lib.PreparedData
  model: object   # TwoTowerModel with the best epoch's weights
  item_table: Optional[types.Table] = None   # the raw item side table (export keeps it)


def require(workdir: str, paths, holds: str, job: str) -> None:
  """FileNotFoundError naming the first missing path and the job that writes it."""
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: {workdir} holds no {holds}; run {job} "
                              f"--workdir={workdir} first")


def restore_retrieval_model(workdir: str, data: prepare_lib.PreparedData, config: Config,
                            checkpoint: Optional[str] = None):
  """A TwoTowerModel for ``data`` with the shipped weights of ``workdir`` (or those of
  ``checkpoint``, e.g. the selection run's best)."""
  import tensorflow as tf

  from twotower.model import retrieval  # deferred: builds TF graphs
  model = retrieval.build_retrieval_model(data, config)
  tf.train.Checkpoint(model=model).read(checkpoint or Workdir(workdir).best).expect_partial()
  return model


def load_trained(workdir: str, data: Optional[prepare_lib.PreparedData] = None) -> TrainedRun:
  """Config, prepared data and the best retrieval model of a finished training run.

  ``data``: the run's prepared data already in memory (the pipeline's), else the arrays
  stored in ``prepared/``, else (a run from before the store) prepared again.
  """
  wd = Workdir(workdir)
  require(workdir, (wd.config, wd.best + ".index"), "finished training run", "twotower-train")
  config = Config.load(wd.config)
  if data is None:
    data = prepared_store.load(wd.prepared, wd.vocab, config.data)
  if data is None:
    data = _prepare_again(wd, config)
  tf_keras.utils.set_random_seed(config.train.seed)
  model = restore_retrieval_model(workdir, data, config)
  return TrainedRun(config, data, model, data.item_table)


def _prepare_again(wd: Workdir, config: Config) -> prepare_lib.PreparedData:
  """The data of a run without ``prepared/``, from its config, checked against its
  vocabularies."""
  # A warm-started run's ids extend its parent's: rebuild them the same way, from its own.
  base = SavedVocabularies.load(wd.vocab) if config.train.init_from else None
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data, base)
  for name, vocab in (("user_id", data.user_vocab), ("item_id", data.item_vocab)):
    saved = Vocabulary.load(wd.path("vocab", f"{name}.txt"))
    if not np.array_equal(saved.tokens, vocab.tokens):
      raise types.DataError(
          f"the input data no longer matches this vocabulary (the {name} vocabulary "
          f"changed since training); retrain, or point the config at the original files",
          path=wd.path("vocab", f"{name}.txt"))
  return data
