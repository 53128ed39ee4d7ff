"""The one training skeleton: the epoch loop both trainers run.

A trainer (train/loop.py for retrieval, train/ranking.py for the ranking head) supplies only
its batches, its step and its evaluation; ``Runner`` owns everything around them: the
checkpoints and resume (mid-epoch too), the divergence guard and its recovery, the progress
bar and TensorBoard, early stopping and the reduce-on-plateau schedule, the best checkpoint,
the record in ``metrics.json`` and the saved config. Rerunning a trainer resumes it from its
latest checkpoint.

Evaluations happen at the end of each epoch and, with ``eval_every_steps``, every that many
steps inside it; early stopping, patience and the plateau schedule count evaluations. Each
one is a record in ``metrics.json`` (its epoch and step) and is followed by a checkpoint, so
a run killed between two evaluations resumes with the schedule it had. A run stopped by
``step_limit`` between evaluations checkpoints first and then evaluates its last weights
*provisionally*: that evaluation may pick the final model, but patience and the plateau
schedule ignore it, and a rerun that trains on undoes it (the best checkpoint it displaced is
put back), so stopping and continuing gives the evaluations of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from twotower import fileio
from twotower.training.stability import DivergenceError, DivergenceGuard


def number(variable):
  """A variable's value as a Python number; int()/float() of a distributed variable (as
  created under a strategy's scope) raise TypeError."""
  return variable.numpy().item()


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The skeleton's knobs; TrainConfig and RankingConfig carry them under these names."""
  epochs: int
  patience: int
  lr_plateau_patience: int
  lr_plateau_factor: float
  early_stopping_metric: str
  max_recoveries: int
  recovery_lr_factor: float
  divergence_spike_factor: float
  progress: bool
  step_limit: int = 0                # 0: no limit
  checkpoint_every_steps: int = 0    # 0: at the end of each epoch only
  eval_every_steps: int = 0          # 0: evaluate at the end of each epoch only

  @classmethod
  def of(cls, config) -> "LoopSettings":
    """The settings a config holds; a field it lacks keeps its default here."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                  if hasattr(config, f.name)})


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """Where a trainer's outputs go, and the names it logs them under."""
  checkpoints: str
  best: str                       # the best epoch's model weights
  tensorboard: str
  metrics: str                    # metrics.json
  section: Optional[str] = None   # its key in metrics.json; None: the whole file
  name: str = ""                  # log prefix, e.g. "ranking " ("ranking epoch 3: ...")
  summary_prefix: str = ""        # TensorBoard tag prefix, e.g. "ranking/"


class MetricsRecord:
  """The one reader and writer of metrics.json.

  A trainer owns one section of the file (the retrieval trainer the whole file, the ranking
  head its ``"ranking"`` entry); writing merges that section into what is on disk, so the
  other trainer's entries are left alone.
  """

  def __init__(self, path: str, section: Optional[str] = None):
    self.path, self.section = path, section

  def _file(self) -> dict:
    return fileio.read_json(self.path) if os.path.exists(self.path) else {}

  def load(self, header: dict) -> dict:
    """This section as a resumed run continues it: ``header`` (what describes this run)
    over what an earlier run recorded, without its final results."""
    entry = self._file() if self.section is None else self._file().get(self.section) or {}
    log = {"epochs": [], **entry, **header}
    log.pop("final", None)
    return log

  def write(self, log: dict) -> None:
    if self.section is None:
      fileio.atomic_write_json(self.path, log)
      return
    whole = self._file()
    whole[self.section] = log
    fileio.atomic_write_json(self.path, whole)

  def merge_final(self, extra: dict) -> None:
    """Adds ``extra`` to this section's finished "final" entry on disk (what a later stage,
    such as the refit, says about the figures already there)."""
    whole = self._file()
    entry = whole if self.section is None else whole.setdefault(self.section, {})
    entry.setdefault("final", {}).update(extra)
    fileio.atomic_write_json(self.path, whole)


def _scalars(metrics: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
  """(name, value) of every number in a metrics dict; a nested dict (an evaluation slice,
  e.g. ``cold``) gives ``cold/recall@50``."""
  for name, value in metrics.items():
    if isinstance(value, dict):
      yield from _scalars(value, f"{prefix}{name}/")
    elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
      yield f"{prefix}{name}", float(value)


def save_config(path: str, config) -> None:
  """Writes a job's config (Config or RankingConfig) as ``path``, warning when a previous
  run there was started with a different one."""
  if os.path.exists(path) and type(config).load(path).to_json() != config.to_json():
    logging.warning("%s differs from this run's options; the new ones are used and saved",
                    path)
  fileio.atomic_write_bytes(path, config.to_json().encode())


# Where a provisional evaluation's new best puts the best checkpoint it displaces.
_SET_ASIDE = "-displaced"


class LoopState(tf.Module):
  """What the loop must remember across a restart, checkpointed with the model."""

  def __init__(self):
    super().__init__()
    var = lambda value, dtype: tf.Variable(value, dtype=dtype, trainable=False)
    self.epoch = var(0, tf.int64)                  # epochs completed
    self.batches_done = var(0, tf.int64)           # batches consumed in the current epoch
    self.best = var(-np.inf, tf.float64)
    self.best_epoch = var(-1, tf.int64)
    self.epochs_since_best = var(0, tf.int64)      # evaluations since the best (the name
                                                   # predates mid-epoch evaluations)
    self.stopped = var(False, tf.bool)
    self.recoveries = var(0, tf.int64)
    self.best_step = var(-1, tf.int64)


class Runner:
  """The epoch loop around a trainer's step.

  Subclasses set ``train_step`` (batch -> {"loss", "grad_norm"}) and implement
  ``dataset``, ``batch_examples``, ``evaluate`` and ``final_metrics``; the other hooks are
  optional. Call ``_start`` once the model and optimizer (all slots built) exist.
  """
  train_step: Callable[[Any], dict]   # batch -> {"loss", "grad_norm"}, set by the trainer
  shown_metrics: tuple = ()   # validation metrics in the epoch's log line, besides the one
                              # early stopping watches
  # False: a fixed number of epochs with no validation, each epoch's weights the best (a
  # refit on data that includes the validation split has nothing to select on).
  selects: bool = True

  def _start(self, model, optimizer, settings: LoopSettings, files: RunFiles, header: dict,
             steps_per_epoch: int) -> None:
    self.model, self.optimizer, self.settings, self.files = model, optimizer, settings, files
    self.steps_per_epoch = steps_per_epoch
    self.state = LoopState()
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, state=self.state)
    self.manager = tf.train.CheckpointManager(self.checkpoint, files.checkpoints,
                                              max_to_keep=3)
    self.best_checkpoint = tf.train.Checkpoint(model=model)
    self.record = MetricsRecord(files.metrics, files.section)
    self.log = self.record.load(header)
    self.writer = tf.summary.create_file_writer(files.tensorboard)
    self.guard = DivergenceGuard(settings.divergence_spike_factor)
    self._start_stretch()

  # -- what a trainer supplies -----------------------------------------------------------
  def dataset(self, epoch: int, skip_batches: int) -> Iterable:
    """The epoch's batches after the first ``skip_batches``, in an order that depends on
    the seed and the epoch only (a resumed run sees the same batches)."""
    raise NotImplementedError

  def batch_examples(self, batch, batch_index: int) -> int:
    """Examples in a batch, for the examples/s figure."""
    raise NotImplementedError

  def evaluate(self) -> dict:
    """Validation metrics of the current weights (after an epoch, or every
    ``eval_every_steps``)."""
    raise NotImplementedError

  def final_metrics(self, valid: Optional[dict]) -> dict:
    """The final results of the best evaluation's model (restored when this is called).

    ``valid`` is that evaluation's figures, to reuse rather than recompute (an evaluation
    can take minutes at scale); None when no evaluation picked the model.
    """
    raise NotImplementedError

  def begin_epoch(self, epoch: int) -> None:
    """Per-epoch preparation (e.g. fresh negatives)."""

  def after_step(self, step: int) -> None:
    """Runs after every healthy step (e.g. the drift monitor)."""

  def epoch_extras(self) -> dict:
    """Extra fields of an epoch's record in metrics.json."""
    return {}

  # -- checkpoints -----------------------------------------------------------------------
  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint; a corrupt one falls back to the previous."""
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        logging.info("restored %s (epoch %d, batch %d)", path, int(self.state.epoch),
                     int(self.state.batches_done))
        return True
      except (tf.errors.OpError, ValueError, AssertionError) as e:
        logging.warning("checkpoint %s is unreadable (%s); trying the previous one", path,
                        str(e).splitlines()[0])
    return False

  def save(self) -> None:
    self.manager.save(checkpoint_number=self._step())
    self.record.write(self.log)

  # -- the loop --------------------------------------------------------------------------
  def run(self) -> dict:
    """Trains (or resumes) to the end; returns the metrics log with its "final" entry."""
    s = self.settings
    provisional = self.log.pop("provisional_best", None)
    restored = self.restore_latest()
    if provisional is not None:   # the last run ended with one; training on undoes it
      self._undo_provisional_best(provisional["displaced"])
    if restored:   # evaluations after the checkpoint are redone
      self.log["epochs"] = [e for e in self.log["epochs"]
                            if e["step"] <= self._step() and not e.get("provisional")]
    else:
      self.log["epochs"] = []
      self.save()    # step 0: what a divergence before the first checkpoint restores
    while (int(self.state.epoch) < s.epochs and not bool(self.state.stopped)
           and not self._step_limit_reached()):
      self._epoch()
    return self._finish()

  def _epoch(self) -> None:
    s, epoch = self.settings, int(self.state.epoch)
    progbar = tf_keras.utils.Progbar(self.steps_per_epoch, verbose=1 if s.progress else 0,
                                     stateful_metrics=["loss"])
    progbar.update(int(self.state.batches_done))
    self.begin_epoch(epoch)
    self._start_stretch()
    saved = False   # whether the current step's state is checkpointed
    while int(self.state.batches_done) < self.steps_per_epoch:
      diverged = False
      for batch in self.dataset(epoch, int(self.state.batches_done)):
        out = self.train_step(batch)
        loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
        reason = self.guard.check(loss, grad_norm)
        if reason:
          self._recover(reason)
          diverged = saved = True
          break
        self._losses.append(loss)
        self._seen += self.batch_examples(batch, int(self.state.batches_done))
        self.state.batches_done.assign_add(1)
        step = self._step()
        progbar.add(1, [("loss", float(np.mean(self._losses[-50:])))])
        if step % 10 == 0:
          with self.writer.as_default(step=step):
            tf.summary.scalar(f"{self.files.summary_prefix}train/loss", loss)
            tf.summary.scalar(f"{self.files.summary_prefix}train/grad_norm", grad_norm)
        self.after_step(step)
        saved = False
        if (self.selects and s.eval_every_steps and step % s.eval_every_steps == 0
            and int(self.state.batches_done) < self.steps_per_epoch):   # not the epoch's end
          self._evaluation(epoch)
          saved = True
          if bool(self.state.stopped):
            return
          self._start_stretch()
        elif s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0:
          self.save()
          saved = True
        if self._step_limit_reached():
          break
      if not diverged:
        break
    if int(self.state.batches_done) >= self.steps_per_epoch:
      self._evaluation(epoch)
    elif not self.selects:   # --step_limit: the partial epoch's record, as at an epoch's end
      self._evaluation(epoch)
    elif not saved:   # --step_limit between evaluations: a rerun continues from here
      self.save()

  def _start_stretch(self) -> None:
    """The loss and speed figures of the next evaluation's record cover the steps from here."""
    self._losses: list = []
    self._seen, self._started = 0, time.time()

  def _recover(self, reason: str) -> None:
    """Back to the last good checkpoint, a lower learning rate, past the bad batch."""
    s, name = self.settings, self.files.name
    bad_epoch, bad_batch = int(self.state.epoch), int(self.state.batches_done)
    bad_step = self._step()
    recoveries = int(self.state.recoveries) + 1
    if recoveries > s.max_recoveries:
      raise DivergenceError(
          f"{name}training diverged at step {bad_step} ({reason}) after {recoveries - 1} "
          f"recoveries (--max_recoveries={s.max_recoveries}); lower --learning_rate or set "
          f"--global_clipnorm / --optimizer=clippy_adagrad")
    lr = number(self.optimizer.learning_rate) * s.recovery_lr_factor
    if not self.restore_latest():
      raise DivergenceError(f"{name}training diverged at step {bad_step} ({reason}) and no "
                            f"checkpoint could be restored")
    restored_step = self._step()
    self.log["epochs"] = [e for e in self.log["epochs"] if e["step"] <= restored_step]
    self.optimizer.learning_rate.assign(lr)
    # Skip the window: continue after the offending batch of the epoch it happened in.
    self.state.epoch.assign(bad_epoch)
    self.state.batches_done.assign(bad_batch + 1)
    self.state.recoveries.assign(recoveries)
    self.guard.reset()
    event = {"step": bad_step, "epoch": bad_epoch, "batch": bad_batch, "reason": reason,
             "restored_step": restored_step, "learning_rate": lr}
    self.log.setdefault("divergence_events", []).append(event)
    logging.warning("%sdivergence at step %d (%s): restored step %d, learning rate -> %g, "
                    "skipping to batch %d", name, bad_step, reason, restored_step, lr,
                    bad_batch + 1)
    self.save()

  def _evaluation(self, epoch: int) -> None:
    """An evaluation on the schedule: its record, the best checkpoint, early stopping and
    the plateau schedule, TensorBoard; then the epoch's end if it is one, and a checkpoint.
    A trainer that does not select (``selects`` False) records the epoch without
    validation, its latest weights the result."""
    end_of_epoch = int(self.state.batches_done) >= self.steps_per_epoch
    record = self._evaluation_record(epoch)
    if self.selects:
      self._early_stopping(record)
    else:   # the last epoch is the result; _finish writes it once the run is complete
      self.state.best_epoch.assign(epoch)
    self.log["epochs"].append(record)
    self._summaries(record)
    if end_of_epoch:
      self.state.epoch.assign_add(1)
      self.state.batches_done.assign(0)
    self.save()
    self._log_line(record, "" if end_of_epoch else f" step {record['step']}")

  def _evaluation_record(self, epoch: int) -> dict:
    elapsed = time.time() - self._started
    valid = self.evaluate() if self.selects else {}
    return {"epoch": epoch, "step": self._step(),
            "loss": float(np.mean(self._losses)) if self._losses else None,
            "examples_per_second": self._seen / max(elapsed, 1e-9),
            "learning_rate": number(self.optimizer.learning_rate),
            **self.epoch_extras(), "valid": valid}

  def _summaries(self, record: dict) -> None:
    prefix = self.files.summary_prefix
    with self.writer.as_default(step=record["step"]):
      for metric, value in _scalars(record["valid"]):
        tf.summary.scalar(f"{prefix}valid/{metric}", value)
      tf.summary.scalar(f"{prefix}train/examples_per_second", record["examples_per_second"])
      tf.summary.scalar(f"{prefix}train/learning_rate", record["learning_rate"])

  def _log_line(self, record: dict, where: str) -> None:
    s, valid = self.settings, record["valid"]
    shown = dict.fromkeys((s.early_stopping_metric,) + tuple(self.shown_metrics))
    logging.info("%sepoch %d%s: loss %s, %.0f examples/s%s", self.files.name,
                 record["epoch"], where,
                 "n/a" if record["loss"] is None else f"{record['loss']:.4g}",
                 record["examples_per_second"],
                 ", valid " + ", ".join(f"{m} {valid[m]:.4f}" for m in shown if m in valid)
                 if valid else "")

  def _early_stopping(self, record: dict) -> None:
    """Best checkpoint, reduce-on-plateau and early stopping on the watched metric; the
    patiences count evaluations."""
    s, state = self.settings, self.state
    value = record["valid"].get(s.early_stopping_metric, -np.inf)
    if value > float(state.best):
      self._mark_best(record, value)
      state.epochs_since_best.assign(0)
      return
    state.epochs_since_best.assign_add(1)
    since = int(state.epochs_since_best)
    if s.lr_plateau_patience and since % s.lr_plateau_patience == 0:
      new_lr = number(self.optimizer.learning_rate) * s.lr_plateau_factor
      self.optimizer.learning_rate.assign(new_lr)
      logging.info("%sno %s improvement for %d evaluations: learning rate -> %g",
                   self.files.name, s.early_stopping_metric, since, new_lr)
    if since >= s.patience:
      logging.info("%searly stopping: best %s %.4f at epoch %d, step %d", self.files.name,
                   s.early_stopping_metric, float(state.best), int(state.best_epoch),
                   int(state.best_step))
      state.stopped.assign(True)

  def _mark_best(self, record: dict, value: float) -> None:
    state = self.state
    state.best.assign(value)
    state.best_epoch.assign(record["epoch"])
    state.best_step.assign(record["step"])
    self.best_checkpoint.write(self.files.best)
    record["best"] = True

  # -- the provisional evaluation at --step_limit ----------------------------------------
  def _provisional_evaluation(self) -> None:
    """The last weights, unevaluated because --step_limit stopped between evaluations: a
    record that may pick the final model (the best checkpoint it displaces is set aside for
    a rerun to put back) but leaves the checkpointed schedule alone."""
    record = {**self._evaluation_record(int(self.state.epoch)), "provisional": True}
    value = record["valid"].get(self.settings.early_stopping_metric, -np.inf)
    if value > float(self.state.best):
      displaced = os.path.exists(self.files.best + ".index")
      self.log["provisional_best"] = {"displaced": displaced}
      self.record.write(self.log)     # first: a rerun must know to undo what follows
      if displaced:
        self._move_checkpoint(self.files.best, self.files.best + _SET_ASIDE)
      self._mark_best(record, value)
    self.log["epochs"].append(record)
    self._summaries(record)
    self._log_line(record, f" step {record['step']} (--step_limit, provisional)")

  def _undo_provisional_best(self, displaced: bool) -> None:
    """Puts back the best checkpoint a provisional evaluation displaced (or removes the one
    it wrote where there was none). Safe to repeat after a crash halfway."""
    if displaced:
      self._move_checkpoint(self.files.best + _SET_ASIDE, self.files.best)
    else:
      for path in glob.glob(glob.escape(self.files.best) + ".*"):
        os.remove(path)

  @staticmethod
  def _move_checkpoint(source: str, target: str) -> None:
    """Renames a checkpoint's files, its .index (what marks it readable) last."""
    paths = sorted(glob.glob(glob.escape(source) + ".*"), key=lambda p: p.endswith(".index"))
    for path in paths:
      os.replace(path, target + path[len(source):])

  def _finish(self) -> dict:
    steps = self._step()   # before the best model (and its step) is read
    records = self.log["epochs"]
    if self.selects and (not records or records[-1]["step"] != steps):
      self._provisional_evaluation()
    if not os.path.exists(self.files.best + ".index"):   # no evaluation had the metric
      self.best_checkpoint.write(self.files.best)
    self.best_checkpoint.read(self.files.best).expect_partial()
    best_step = int(self.state.best_step)
    best = next((r for r in reversed(records) if r.get("best") and r["step"] == best_step),
                None)
    self.log["final"] = {"best_epoch": int(self.state.best_epoch), "best_step": best_step,
                         **self.final_metrics(best["valid"] if best else None),
                         "steps": steps, "recoveries": int(self.state.recoveries)}
    self.record.write(self.log)
    self.writer.flush()
    return self.log

  def _step(self) -> int:
    return number(self.optimizer.iterations)

  def _step_limit_reached(self) -> bool:
    limit = self.settings.step_limit
    return limit > 0 and self._step() >= limit
