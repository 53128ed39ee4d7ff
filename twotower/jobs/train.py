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
from twotower.training import loop, runner
from twotower.training import refit as refit_lib
from twotower.workdir import Workdir


def train(config: Config, workdir: str, data: Optional[prepare_lib.PreparedData] = None) -> dict:
  """Trains (or resumes) the retrieval model in ``workdir``; returns the metrics log.

  ``data``: already prepared from ``config.data``, to skip loading it again.
  """
  config.validate()
  if data is None:   # first, so that bad input leaves no half-made run directory behind
    data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  wd = Workdir(workdir)
  os.makedirs(wd.root, exist_ok=True)
  runner.save_config(wd.config, config)
  data.save_vocab(wd.vocab)
  trainer = loop.Trainer(config, workdir, data)
  log = trainer.run()
  if config.train.refit == "none":
    return log
  return refit_lib.refit(config, workdir, data, log, trainer.distributed)
