"""The training skeleton (twotower/training/runner.py) on a toy least-squares model.

Fast and independent of the recommenders: resume trains only what is missing, recovery
takes its settings from the config, early stopping and the plateau schedule follow the
watched metric, metrics.json keeps other trainers' sections, and the log line rounds the loss.
"""
import json
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from absl import logging as absl_logging

from twotower.config import RankingConfig, TrainConfig
from twotower.model.guarded_step import guarded_step
from twotower.training import runner
from twotower.training.stability import DivergenceError

STEPS_PER_EPOCH = 4
TRUE_WEIGHTS = np.array([1.5, -2.0], np.float32)


class _Toy(tf_keras.Model):

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(np.zeros(2, np.float32))

  def train_step(self, batch):
    x, y = batch
    return guarded_step(
        self, lambda: tf.reduce_mean(tf.square(tf.linalg.matvec(x, self.w) - y)))


def _settings(**overrides) -> runner.LoopSettings:
  values = dict(epochs=3, patience=5, lr_plateau_patience=0, lr_plateau_factor=0.5,
                early_stopping_metric="score", max_recoveries=3, recovery_lr_factor=0.5,
                divergence_spike_factor=10.0, progress=False)
  return runner.LoopSettings(**{**values, **overrides})


class _ToyRunner(runner.Runner):
  """Batches of 8 rows; ``faults``: (epoch, batch) positions whose inputs are NaN;
  ``scores``: the validation score of each epoch (default: minus the weight error)."""

  def __init__(self, root, settings, *, faults=(), scores=None, section=None,
               score_at_step=None):
    model = _Toy()
    optimizer = tf_keras.optimizers.SGD(0.1)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    self._start(model, optimizer, settings,
                runner.RunFiles(checkpoints=str(root / "checkpoints"), best=str(root / "best"),
                                tensorboard=str(root / "tensorboard"),
                                metrics=str(root / "metrics.json"), section=section),
                header={"toy": True}, steps_per_epoch=STEPS_PER_EPOCH)
    self.train_step = tf.function(model.train_step)
    self.faults, self.scores, self.batches_fed, self.evaluations = set(faults), scores, 0, 0
    self.score_at_step = score_at_step   # step -> validation score, overrides the others

  def dataset(self, epoch, skip_batches):
    rng = np.random.default_rng(epoch)
    for index in range(STEPS_PER_EPOCH):
      x = rng.normal(size=(8, 2)).astype(np.float32)
      if index < skip_batches:
        continue
      if (epoch, index) in self.faults:
        x = np.full_like(x, np.nan)
      self.batches_fed += 1
      yield tf.constant(x), tf.constant(x @ TRUE_WEIGHTS)

  def batch_examples(self, batch, batch_index):
    return 8

  def evaluate(self):
    self.evaluations += 1
    if self.score_at_step is not None:
      return {"score": self.score_at_step[self._step()]}
    if self.scores is not None:
      return {"score": self.scores[self.evaluations - 1]}
    return {"score": -float(np.abs(self.model.w.numpy() - TRUE_WEIGHTS).sum())}

  def final_metrics(self, valid):
    return {"valid": valid, "w": self.model.w.numpy().tolist()}


def test_resume_trains_only_the_missing_epochs(tmp_path):
  first = _ToyRunner(tmp_path, _settings(epochs=2)).run()
  assert [e["epoch"] for e in first["epochs"]] == [0, 1]
  again = _ToyRunner(tmp_path, _settings(epochs=3))
  log = again.run()
  assert again.batches_fed == STEPS_PER_EPOCH          # epoch 2 only, not 0 and 1 again
  assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2]
  assert log["epochs"][:2] == first["epochs"]
  assert log["final"]["steps"] == 3 * STEPS_PER_EPOCH


def test_recovery_takes_its_settings_from_the_config(tmp_path):
  trainer = _ToyRunner(tmp_path / "a", _settings(epochs=1, recovery_lr_factor=0.25),
                       faults={(0, 2)})
  log = trainer.run()
  [event] = log["divergence_events"]
  assert event["batch"] == 2 and "non-finite" in event["reason"]
  assert event["restored_step"] == 0                    # the step-0 checkpoint
  assert event["learning_rate"] == pytest.approx(0.1 * 0.25)
  assert log["final"]["recoveries"] == 1
  assert log["final"]["steps"] == 1      # back to step 0, past the bad batch: batch 3 only
  with pytest.raises(DivergenceError, match="--max_recoveries=0"):
    _ToyRunner(tmp_path / "b", _settings(epochs=1, max_recoveries=0), faults={(0, 1)}).run()


def test_ranking_config_carries_the_recovery_settings():
  settings = runner.LoopSettings.of(RankingConfig(max_recoveries=7, recovery_lr_factor=0.2,
                                                  divergence_spike_factor=4.0))
  assert (settings.max_recoveries, settings.recovery_lr_factor,
          settings.divergence_spike_factor) == (7, 0.2, 4.0)
  assert settings.step_limit == 0 and settings.checkpoint_every_steps == 0
  train = runner.LoopSettings.of(TrainConfig(step_limit=9, checkpoint_every_steps=3))
  assert (train.step_limit, train.checkpoint_every_steps) == (9, 3)


def test_plateau_halves_the_learning_rate_and_patience_stops(tmp_path):
  trainer = _ToyRunner(tmp_path, _settings(epochs=6, patience=3, lr_plateau_patience=1),
                       scores=[1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
  log = trainer.run()
  assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2, 3]   # stopped: 3 without gain
  # Each record has the rate its epoch trained with; each epoch without gain halves it.
  assert [e["learning_rate"] for e in log["epochs"]] == pytest.approx([0.1, 0.1, 0.05, 0.025])
  assert log["final"]["best_epoch"] == 0 and log["epochs"][0]["best"]


def test_metrics_record_keeps_other_sections(tmp_path):
  (tmp_path / "metrics.json").write_text(json.dumps({"retrieval": 1, "epochs": ["theirs"]}))
  _ToyRunner(tmp_path, _settings(epochs=1), section="toy").run()
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["retrieval"] == 1 and saved["epochs"] == ["theirs"]
  assert saved["toy"]["toy"] is True and len(saved["toy"]["epochs"]) == 1
  assert "final" in saved["toy"]


def test_epoch_log_line_rounds_the_loss(tmp_path, caplog):
  # absl drops INFO below its own verbosity, which a test that parsed job flags may have set.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      _ToyRunner(tmp_path, _settings(epochs=1)).run()
  finally:
    absl_logging.set_verbosity(verbosity)
  [line] = [r.getMessage() for r in caplog.records if "epoch 0: loss" in r.getMessage()]
  loss = re.search(r"loss (\S+),", line).group(1)
  assert len(re.sub(r"[^0-9]", "", loss.split("e")[0]).lstrip("0")) <= 4, line
  assert re.search(r"valid score -?\d+\.\d{4}$", line), line


def test_save_config_warns_when_the_options_change(tmp_path, caplog):
  path = str(tmp_path / "config.json")
  runner.save_config(path, RankingConfig())
  with caplog.at_level(logging.WARNING):
    runner.save_config(path, RankingConfig())
    assert "differs" not in caplog.text
    runner.save_config(path, RankingConfig(npratio=8))
  assert "differs" in caplog.text
  assert RankingConfig.load(path).npratio == 8


# -- evaluations inside epochs (--eval_every_steps) -----------------------------------------


def _tensorboard_steps(root, tag):
  import glob
  steps = []
  for path in glob.glob(str(root / "tensorboard" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return sorted(steps)


def test_mid_epoch_evaluations_come_at_their_steps(tmp_path):
  trainer = _ToyRunner(tmp_path, _settings(epochs=2, eval_every_steps=3))
  log = trainer.run()
  # Every 3 steps and at each epoch's end (4 steps an epoch); no step evaluated twice.
  assert [(e["epoch"], e["step"]) for e in log["epochs"]] == [(0, 3), (0, 4), (1, 6), (1, 8)]
  assert _tensorboard_steps(tmp_path, "valid/score") == [3, 4, 6, 8]
  on_disk = json.loads((tmp_path / "metrics.json").read_text())
  assert [e["step"] for e in on_disk["epochs"]] == [3, 4, 6, 8]
  assert log["final"]["steps"] == 8 and trainer.evaluations == 4


def test_patience_and_plateau_count_evaluations_not_epochs(tmp_path):
  trainer = _ToyRunner(tmp_path, _settings(epochs=5, patience=2, lr_plateau_patience=1,
                                           eval_every_steps=2),
                       scores=[1.0, 0.5, 0.4, 0.3, 0.2])
  log = trainer.run()
  # Best at the first evaluation, two more without gain: stopped at step 6, in epoch 1.
  assert [(e["epoch"], e["step"]) for e in log["epochs"]] == [(0, 2), (0, 4), (1, 6)]
  assert [e["learning_rate"] for e in log["epochs"]] == pytest.approx([0.1, 0.1, 0.05])
  assert log["final"]["steps"] == 6 and trainer.batches_fed == 6
  assert (log["final"]["best_epoch"], log["final"]["best_step"]) == (0, 2)


def test_final_valid_is_the_best_evaluations_record_not_recomputed(tmp_path):
  trainer = _ToyRunner(tmp_path, _settings(epochs=3, eval_every_steps=2),
                       scores=[0.1, 0.3, 0.2, 0.25, 0.15, 0.05])
  log = trainer.run()
  assert trainer.evaluations == len(log["epochs"]) == 6    # none after training
  [best] = [e for e in log["epochs"] if e["step"] == log["final"]["best_step"]]
  assert best["step"] == 4 and best["best"]
  assert log["final"]["valid"] == best["valid"] == {"score": 0.3}


# Validation score by step: best at 3, then the plateau halves the rate at every evaluation,
# which changes the weights after it; step 5 (where the interrupted run stops) scores best.
_SCORES = {3: 1.0, 4: 0.9, 5: 9.0, 6: 0.8, 8: 0.7, 9: 0.6, 12: 0.5}
_SAME = ("epoch", "step", "learning_rate", "valid", "best")


def test_resume_between_mid_epoch_evaluations_matches_an_uninterrupted_run(tmp_path):
  settings = dict(epochs=3, patience=10, lr_plateau_patience=1, eval_every_steps=3)
  whole = _ToyRunner(tmp_path / "whole", _settings(**settings), score_at_step=_SCORES).run()
  assert [e["step"] for e in whole["epochs"]] == [3, 4, 6, 8, 9, 12]

  # Stopped at step 5, between the evaluations at 4 and 6: the last weights are evaluated
  # provisionally and picked as the model of this call...
  paused = _ToyRunner(tmp_path / "split", _settings(**settings, step_limit=5),
                      score_at_step=_SCORES).run()
  assert [e["step"] for e in paused["epochs"]] == [3, 4, 5]
  assert paused["epochs"][-1]["provisional"] and paused["final"]["best_step"] == 5
  assert paused["final"]["valid"] == {"score": 9.0}
  # Rerun with the same limit: nothing to train, the same provisional pick again.
  idle = _ToyRunner(tmp_path / "split", _settings(**settings, step_limit=5),
                    score_at_step=_SCORES)
  assert idle.run()["final"] == paused["final"] and idle.batches_fed == 0
  # ...and the rerun resumes mid-epoch with the checkpointed schedule, as if never stopped.
  resumed = _ToyRunner(tmp_path / "split", _settings(**settings), score_at_step=_SCORES)
  log = resumed.run()
  assert resumed.batches_fed == 12 - 5
  assert ([{k: e.get(k) for k in _SAME} for e in log["epochs"]]
          == [{k: e.get(k) for k in _SAME} for e in whole["epochs"]])
  # The same best model (step 3's weights, put back over step 5's) and figures.
  assert log["final"] == whole["final"] and log["final"]["best_step"] == 3
  assert _tensorboard_steps(tmp_path / "split", "valid/score") == [3, 4, 5, 5, 6, 8, 9, 12]


def test_step_limit_on_an_evaluation_is_no_provisional_one(tmp_path):
  log = _ToyRunner(tmp_path, _settings(epochs=3, eval_every_steps=3, step_limit=6)).run()
  assert [e["step"] for e in log["epochs"]] == [3, 4, 6]
  assert not any(e.get("provisional") for e in log["epochs"])
