"""The workdir-level retrieval training job behind twotower-train: config, data, vocabularies.

It validates the config, prepares the data, saves both and hands the arrays to the retrieval
trainer (training/loop.py), then, unless --refit=none, to the refit (training/refit.py), whose
model is the one that ships. Rerunning it on the same workdir resumes whichever was running.
"""
from __future__ import annotations

import os
from typing import Optional

from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.data import prepared_store
from twotower.training import loop, runner, warm_start
from twotower.training import refit as refit_lib
from twotower.workdir import Workdir


def _parent(config: Config, workdir: str) -> Optional[warm_start.Parent]:
  """The --init_from run, on a fresh workdir only: a rerun resumes its own checkpoints."""
  if config.train.init_from and not warm_start.resuming(workdir):
    return warm_start.load_parent(config.train.init_from, config)
  return None


def prepare_data(config: Config, workdir: str,
                 parent: Optional[warm_start.Parent] = None) -> prepare_lib.PreparedData:
  """The run's data as twotower-train prepares it: with --init_from, its ids extend the
  parent's (on a rerun, the run's own saved ones)."""
  parent = parent or _parent(config, workdir)
  return prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data,
                             warm_start.base_vocabularies(config, workdir, parent))


def train(config: Config, workdir: str, data: Optional[prepare_lib.PreparedData] = None) -> dict:
  """Trains (or resumes) the retrieval model in ``workdir``; returns the metrics log.

  ``data``: already prepared by ``prepare_data``, to skip loading it again.
  """
  config.validate()
  parent = _parent(config, workdir)
  if data is None:   # first, so that bad input leaves no half-made run directory behind
    data = prepare_data(config, workdir, parent)
  wd = Workdir(workdir)
  os.makedirs(wd.root, exist_ok=True)
  runner.save_config(wd.config, config)
  data.save_vocab(wd.vocab)
  prepared_store.save(wd.prepared, data, config.data)   # later jobs load these arrays
  trainer = loop.Trainer(config, workdir, data)
  trainer.log["data_time_range"] = warm_start.time_range(data)
  if parent is not None:
    trainer.log["parent"] = warm_start.parent_record(parent)
    trainer.log["warm_start"] = warm_start.apply(trainer.model, trainer.optimizer, parent,
                                                 data, config)
    warm_start.save_init(trainer, workdir)
  log = trainer.run()
  if config.train.refit == "none":
    return log
  # A warm run's refit starts from the same warm-started state as its selection run.
  return refit_lib.refit(config, workdir, data, log, trainer.strategy,
                         on_start=warm_start.restore_init if config.train.init_from else None)
