"""Refit: after model selection, the selected recipe again on more of the data; that ships.

Early stopping on validation chooses how long to train. The validation and test events are
each user's newest, the most predictive of what comes next, and items that appear only
there are never trained at all, so the selection model leaves accuracy behind. The refit
starts from the selection run's initialisation (same seed, same architecture), trains on
train + valid (``train_valid``) or everything (``all``) for as long as the selection run
trained up to its best evaluation, with the learning rate that run had at the same point
(plateau reductions included), and writes ``checkpoints/best``: the model that rank, index,
export and recommend use. The selection run's best stays as ``checkpoints/selection_best``
and its validation and test figures stay in metrics.json, marked as the selection model's.

Length is measured in epochs (passes over the data), not steps: the refit sees each event as
often as the selected model saw each training event, so its steps grow with the data (by
about 1 / (1 - valid_fraction - test_fraction)). A selection run whose best evaluation fell
inside an epoch (--step_limit) refits the same fraction of an epoch.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from twotower.config import Config
from twotower.data import pipeline, splits
from twotower.data import prepare as prepare_lib
from twotower.training import loop, runner
from twotower.workdir import Workdir

UNSEEN_NONE = 3   # a split code no trainer or evaluation reads
REFIT_SPLITS = {"train_valid": (splits.TRAIN, splits.VALID),
                "all": (splits.TRAIN, splits.VALID, splits.TEST)}


def trained_on(mode: str) -> str:
  """The splits a refit of ``mode`` trains on, as the records name them ("train+valid")."""
  return "+".join(splits.SPLIT_NAMES[s] for s in REFIT_SPLITS[mode])


def refit_data(data: prepare_lib.PreparedData, mode: str) -> prepare_lib.PreparedData:
  """``data`` with the events of the refit's splits relabelled as training events.

  Histories are unchanged (they never depended on the split), and the test split's queries
  still exclude everything earlier, so train_valid's test figure is measured as before.
  """
  ev = data.events
  split = np.where(np.isin(ev.split, REFIT_SPLITS[mode]), splits.TRAIN, ev.split)
  split = split.astype(np.int8)
  stats = {**data.stats, "train": int((split == splits.TRAIN).sum()),
           "valid": int((split == splits.VALID).sum()),
           "test": int((split == splits.TEST).sum())}
  return dataclasses.replace(data, events=dataclasses.replace(ev, split=split), stats=stats)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The selection run's learning rate against its position in epochs, up to its best
  evaluation; the refit follows it at the same positions of its own (longer) epochs."""
  boundaries: tuple[float, ...]   # epoch position at which each rate stops applying
  rates: tuple[float, ...]

  @classmethod
  def of(cls, selection_log: dict, steps_per_epoch: int) -> "Schedule":
    records = selection_log["epochs"]
    best = max((i for i, r in enumerate(records) if r.get("best")), default=len(records) - 1)
    chosen = records[:best + 1]
    if not chosen:
      raise ValueError("the selection run recorded no evaluation to refit to")
    return cls(tuple(r["step"] / steps_per_epoch for r in chosen),
               tuple(r["learning_rate"] for r in chosen))

  @property
  def epochs(self) -> float:
    return self.boundaries[-1]

  def rate_at(self, epochs_done: float) -> float:
    i = int(np.searchsorted(self.boundaries, epochs_done, side="right"))
    return self.rates[min(i, len(self.rates) - 1)]


class RefitTrainer(loop.Trainer):
  """The retrieval trainer on the refit's data, run for the selected length with the
  selection run's learning-rate schedule and no validation."""
  selects = False

  def __init__(self, config: Config, workdir: str, data: prepare_lib.PreparedData,
               schedule: Schedule, strategy: Optional[tf.distribute.Strategy] = None):
    wd = Workdir(workdir)
    mode = config.train.refit
    files = runner.RunFiles(
        checkpoints=os.path.join(wd.refit, "checkpoints"), best=wd.best,
        tensorboard=os.path.join(wd.tensorboard, "refit"), metrics=wd.metrics,
        section="refit", name="refit ")
    super().__init__(config, workdir, refit_data(data, mode), files=files,
                     examples=self._examples(data, mode), strategy=strategy)
    self.schedule = schedule
    self.first_step = self._step()
    self.target_steps = max(1, round(schedule.epochs * self.steps_per_epoch))
    self.settings = dataclasses.replace(
        self.settings, epochs=math.ceil(self.target_steps / self.steps_per_epoch),
        step_limit=self.first_step + self.target_steps)
    self.log.update(trained_on=trained_on(mode),
                    target_epochs=round(schedule.epochs, 4), target_steps=self.target_steps)

  def _examples(self, data: prepare_lib.PreparedData,
                mode: str) -> Optional[prepare_lib.PreparedData]:
    """The data whose training split the batches come from (None: the refit's data)."""
    return None

  def _follow_schedule(self, step: int) -> None:
    """The selection run's rate at this point, times the refit's own recovery factors."""
    rate = (self.schedule.rate_at((step - self.first_step) / self.steps_per_epoch)
            * self.settings.recovery_lr_factor ** int(self.state.recoveries))
    if not math.isclose(runner.number(self.optimizer.learning_rate), rate, rel_tol=1e-6):
      self.optimizer.learning_rate.assign(rate)

  def begin_epoch(self, epoch: int) -> None:
    self._follow_schedule(self._step())

  def after_step(self, step: int) -> None:
    super().after_step(step)
    self._follow_schedule(step)

  def final_metrics(self, valid: Optional[dict]) -> dict:
    if self.config.train.refit == "all":   # nothing is held out any more
      return {}
    # self.data is the refit's (refit_data): its cold slice is the test targets whose item
    # has no event in train+valid, what this model trained on.
    return {"test": loop.split_metrics(self.model, self.data, splits.TEST, self.config,
                                       self.encoder),
            "most_popular_test": loop.most_popular_metrics(self.data, splits.TEST,
                                                           self.config)}

  def run(self) -> dict:
    started = time.time()
    log = super().run()
    log["final"]["seconds"] = round(time.time() - started, 1)
    self.record.write(log)
    return log


class ContinuationTrainer(RefitTrainer):
  """The refit of a selection run that made at most one pass: its model and optimizer go on
  over the events it never trained on, for the same share of a pass, at its last learning
  rate. Every event is then seen once, as in a retrain on all of them, for a fifth of the
  cost (the newest events come last, where a retrain shuffles them in); the step count, the
  queue and Adam's moments carry on from the selection run's last checkpoint."""

  def __init__(self, config: Config, workdir: str, data: prepare_lib.PreparedData,
               schedule: Schedule, selection_checkpoint: str,
               strategy: Optional[tf.distribute.Strategy] = None):
    self._selection_checkpoint = selection_checkpoint
    super().__init__(config, workdir, data, Schedule(schedule.boundaries[-1:],
                                                      schedule.rates[-1:]), strategy)
    self.log.update(continued_from=selection_checkpoint, continued_at_step=self.first_step)

  def _examples(self, data: prepare_lib.PreparedData,
                mode: str) -> Optional[prepare_lib.PreparedData]:
    unseen = np.isin(data.events.split, REFIT_SPLITS[mode][1:])
    # UNSEEN_NONE marks events neither trained on again nor evaluated here.
    split = np.where(unseen, splits.TRAIN, UNSEEN_NONE).astype(np.int8)
    return dataclasses.replace(data, events=dataclasses.replace(data.events, split=split))

  def _start(self, model, optimizer, *args, **kwargs) -> None:
    tf.train.Checkpoint(model=model, optimizer=optimizer).read(
        self._selection_checkpoint).expect_partial()
    super()._start(model, optimizer, *args, **kwargs)


def continues(config: Config, schedule: Schedule, selection_log: dict) -> bool:
  """Whether the refit continues the selection model rather than retraining: its selected
  length is at most --refit_continue_epochs and its best evaluation was its last, so that
  the selection run's latest checkpoint holds the selected weights with their optimizer."""
  records = selection_log["epochs"]
  return (0 < schedule.epochs <= config.train.refit_continue_epochs
          and bool(records) and bool(records[-1].get("best")))


def refit(config: Config, workdir: str, data: prepare_lib.PreparedData,
          selection_log: dict, strategy: tf.distribute.Strategy,
          on_start: Optional[Callable[[RefitTrainer], None]] = None) -> dict:
  """Runs (or resumes) the refit after a finished selection run; returns the selection
  log with its final figures marked as the selection model's and the refit's summary.

  ``on_start(trainer)``: runs once the refit's model exists, before it trains (the warm
  start restores its initialisation there).
  """
  distributed = strategy.num_replicas_in_sync > 1
  selection_steps = pipeline.steps_per_epoch(data, config.train.batch_size, distributed)
  schedule = Schedule.of(selection_log, selection_steps)
  trainer: RefitTrainer
  if continues(config, schedule, selection_log):
    trainer = ContinuationTrainer(config, workdir, data, schedule,
                                  tf.train.latest_checkpoint(Workdir(workdir).checkpoints),
                                  strategy)
  else:
    trainer = RefitTrainer(config, workdir, data, schedule, strategy)
    if on_start is not None:
      on_start(trainer)
  final = trainer.run()["final"]
  summary = {"data": trainer.log["trained_on"], "epochs": trainer.log["target_epochs"],
             "steps": final["steps"] - trainer.first_step, "seconds": final["seconds"],
             "how": ("continued the selection model over the events it never trained on"
                     if isinstance(trainer, ContinuationTrainer) else
                     "retrained from the selection run's initialisation"),
             "recoveries": final["recoveries"],
             **{k: final[k] for k in ("test", "most_popular_test") if k in final}}
  marks = {
      "figures_from": "the selection model (trained on the train split; "
                      "checkpoints/selection_best)",
      "shipped_model": f"the refit on {summary['data']} (checkpoints/best), "
                       f"{summary['epochs']:g} epochs, {summary['steps']} steps",
      "refit": summary}
  runner.MetricsRecord(Workdir(workdir).metrics).merge_final(marks)
  selection_log["final"].update(marks)
  return selection_log
