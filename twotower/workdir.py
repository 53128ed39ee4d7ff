"""One run's directory: its layout (pinned in docs/design.md, "Artifact layout") and
reloading what training left.

Downstream jobs (evaluate, rank, index, export) rebuild the prepared data from the saved
config and check it against the saved vocabularies, so a changed input file is an error
rather than a silently different id mapping.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tf_keras

from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.data import types
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


def load_trained(workdir: str) -> TrainedRun:
  """Config, prepared data and the best retrieval model of a finished training run."""
  wd = Workdir(workdir)
  require(workdir, (wd.config, wd.best + ".index"), "finished training run", "twotower-train")
  config = Config.load(wd.config)
  raw = prepare_lib.load_raw(config.data)
  data = prepare_lib.prepare(raw, config.data)
  for name, vocab in (("user_id", data.user_vocab), ("item_id", data.item_vocab)):
    saved = Vocabulary.load(wd.path("vocab", f"{name}.txt"))
    if not np.array_equal(saved.tokens, vocab.tokens):
      raise types.DataError(
          f"the input data no longer matches this vocabulary (the {name} vocabulary "
          f"changed since training); retrain, or point the config at the original files",
          path=wd.path("vocab", f"{name}.txt"))
  tf_keras.utils.set_random_seed(config.train.seed)
  model = restore_retrieval_model(workdir, data, config)
  return TrainedRun(config, data, model, raw.item_features)
