"""Refit (twotower/training/refit.py): after selection, the shipped model is trained again
on more of the data, for the selected length, with the selection run's schedule, and
everything downstream uses it; a killed refit resumes from its own checkpoints."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.jobs import train as train_job
from twotower.model import retrieval
from twotower.model.encoding import Encoder
from twotower.training import loop, refit
from twotower.workdir import Workdir, load_trained


def _config(mode: str, epochs: int = 3):
  config = tiny_config()
  config.train.refit = mode
  config.train.epochs = epochs
  config.train.patience = 10
  return config


@pytest.fixture(scope="module")
def data():
  config = _config("all")
  return prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)


@pytest.fixture(scope="module")
def refit_all(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("refit_all"))
  return train_job.train(_config("all"), workdir, data), workdir


def _weights(path: str) -> dict:
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name.startswith("model/") and "OPTIMIZER" not in name}


def test_refit_data_moves_the_chosen_splits_into_train(data):
  ev = data.events
  both = refit.refit_data(data, "train_valid").events.split
  everything = refit.refit_data(data, "all").events.split
  assert (both == splits.TRAIN).sum() == (ev.split != splits.TEST).sum()
  np.testing.assert_array_equal(both == splits.TEST, ev.split == splits.TEST)
  assert (everything == splits.TRAIN).all()
  assert (data.events.split == splits.VALID).any()   # the original is left alone


def test_the_shipped_model_is_the_refit_and_metrics_say_so(refit_all, data):
  log, workdir = refit_all
  steps_per_epoch = -(-len(data.events) // 256)
  wd = Workdir(workdir)
  final = log["final"]
  assert "selection model" in final["figures_from"]
  assert "refit on train+valid+test" in final["shipped_model"]
  assert final["refit"]["steps"] == 3 * steps_per_epoch   # the selected 3 epochs, on all data
  assert final["refit"]["steps"] > final["steps"]
  on_disk = json.load(open(wd.metrics))
  assert on_disk["final"]["refit"] == final["refit"]
  assert on_disk["refit"]["trained_on"] == "train+valid+test"
  assert on_disk["final"]["test"] == final["test"]   # the selection model's figures stay
  shipped, selected = _weights(wd.best), _weights(wd.selection_best)
  assert shipped.keys() == selected.keys()
  assert any(not np.array_equal(shipped[k], selected[k]) for k in shipped)
  # Downstream jobs load the refit model, not the selection model.
  run = load_trained(workdir)
  loaded = Encoder(run.model, run.data).items()
  selection_model = retrieval.build_retrieval_model(run.data, run.config)
  tf.train.Checkpoint(model=selection_model).read(wd.selection_best).expect_partial()
  assert not np.allclose(loaded, Encoder(selection_model, run.data).items())


def test_refit_starts_from_the_selection_runs_initialisation(data, tmp_path):
  config = _config("all")
  selection = loop.Trainer(config, str(tmp_path / "a"), data)
  first = [v.numpy() for v in selection.model.weights]
  schedule = refit.Schedule((3.0,), (config.train.learning_rate,))
  again = refit.RefitTrainer(config, str(tmp_path / "b"), data, schedule)
  for a, b in zip(first, [v.numpy() for v in again.model.weights]):
    np.testing.assert_array_equal(a, b)


def test_schedule_follows_the_selection_runs_learning_rate_up_to_its_best():
  log = {"epochs": [
      {"step": 10, "learning_rate": 0.01, "best": True},
      {"step": 20, "learning_rate": 0.01},
      {"step": 30, "learning_rate": 0.005, "best": True},   # after a plateau halving
      {"step": 40, "learning_rate": 0.0025}]}
  schedule = refit.Schedule.of(log, steps_per_epoch=10)
  assert schedule.epochs == 3.0
  assert [schedule.rate_at(e) for e in (0.0, 1.5, 2.0, 2.9)] == [0.01, 0.01, 0.005, 0.005]


def test_train_valid_reports_an_honest_test_figure(data, tmp_path):
  log = train_job.train(_config("train_valid", epochs=2), str(tmp_path), data)
  refit_test = log["final"]["refit"]["test"]
  assert refit_test["num_users"] == log["final"]["test"]["num_users"] > 0
  assert 0 < refit_test["recall@10"] <= 1
  assert "train+valid" in log["final"]["shipped_model"]


def test_a_killed_refit_resumes_from_its_own_checkpoints(data, tmp_path, monkeypatch):
  config = _config("all")
  config.train.checkpoint_every_steps = 5
  workdir = str(tmp_path)
  original = refit.RefitTrainer.after_step
  calls = []

  def dies_at_step_12(self, step):
    original(self, step)
    calls.append(step)
    if step == 12 and len(calls) == 12:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(refit.RefitTrainer, "after_step", dies_at_step_12)
  with pytest.raises(KeyboardInterrupt):
    train_job.train(config, workdir, data)
  assert not os.path.exists(Workdir(workdir).best + ".index")   # nothing shipped half-made
  calls.clear()
  log = train_job.train(config, workdir, data)
  assert calls[0] == 11   # resumed after the step-10 checkpoint, not from step 0
  assert log["final"]["refit"]["steps"] == calls[-1]
