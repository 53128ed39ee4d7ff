"""End-to-end retrieval training on small data: quality, resume, divergence recovery."""
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from twotower.config import Config
from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.jobs import train as train_job
from twotower.model.encoding import Encoder
from twotower.training import loop
from twotower.training.stability import DivergenceError


def small_config(**overrides) -> Config:
  config = Config()
  config.data.dataset = "synthetic"
  config.data.synthetic_users = 600
  config.data.synthetic_items = 400
  config.data.synthetic_interactions = 24_000
  config.train.batch_size = 256
  config.train.epochs = 6
  config.train.progress = False
  config.loss.queue_size = 512
  config.loss.queue_warmup_steps = 20
  config.train.refit = "none"   # these tests are about the selection run (refit: test_refit.py)
  for key, value in overrides.items():
    section, name = key.split("__")
    setattr(getattr(config, section), name, value)
  return config


@pytest.fixture(scope="module")
def synthetic_data():
  config = small_config()
  return prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)


@pytest.fixture(scope="module")
def clean_run(synthetic_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("clean"))
  return train_job.train(small_config(), workdir, synthetic_data), workdir


def _logged_steps(events_file: str, tag: str = "train/loss") -> list:
  """Steps at which one TensorBoard events file recorded ``tag`` (every 10th step)."""
  return [event.step for event in tf.compat.v1.train.summary_iterator(events_file)
          for value in event.summary.value if value.tag == tag]


def _events_files(workdir: str) -> list:
  return glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


def test_synthetic_run_beats_most_popular(clean_run):
  final = clean_run[0]["final"]
  model, popular = final["test"]["recall@20"], final["most_popular_test"]["recall@20"]
  assert model > 1.5 * popular and model - popular > 0.05, (model, popular)


def test_metrics_json_records_every_epoch_and_the_final_split(clean_run):
  log, workdir = clean_run
  with open(os.path.join(workdir, "metrics.json")) as f:
    on_disk = json.load(f)
  assert [e["epoch"] for e in on_disk["epochs"]] == list(range(len(on_disk["epochs"])))
  for key in ("recall@20", "ndcg@20", "hit_rate@20", "mrr"):
    assert key in on_disk["final"]["test"]
  assert on_disk["data"]["skipped_rows"] == 0
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_training_is_deterministic_under_seed(clean_run, synthetic_data, tmp_path):
  config = small_config(train__epochs=1)
  a = train_job.train(config, str(tmp_path / "a"), synthetic_data)["epochs"][0]
  b = train_job.train(config, str(tmp_path / "b"), synthetic_data)["epochs"][0]
  assert a["loss"] == b["loss"]
  assert a["valid"] == b["valid"]


def test_rerun_resumes_instead_of_restarting(synthetic_data, tmp_path):
  config = small_config(train__epochs=2)
  first = train_job.train(config, str(tmp_path), synthetic_data)
  first_run_events = _events_files(str(tmp_path))
  config.train.epochs = 3
  log = train_job.train(config, str(tmp_path), synthetic_data)
  # The rerun's own TensorBoard events: it trained only the steps of epoch 2.
  rerun_file, = set(_events_files(str(tmp_path))) - set(first_run_events)
  assert min(_logged_steps(rerun_file)) > first["final"]["steps"]
  assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2]
  assert log["epochs"][:2] == first["epochs"]          # epochs 0-1 were not trained again
  assert log["final"]["steps"] == log["epochs"][-1]["step"] == 3 * first["epochs"][0]["step"]


class _Faulty:
  """Wraps a train step. "nan": the user tower's id embeddings turn NaN *before* the step,
  so the real step computes a non-finite loss and gradient itself (only restoring a
  checkpoint heals it). "spike": after a healthy step the weights are really damaged and
  the loss multiplied, as a poisoned batch would."""

  def __init__(self, trainer, faults):
    self._trainer, self._step, self._faults, self._calls = trainer, trainer.train_step, faults, 0

  def __call__(self, batch):
    self._calls += 1
    fault = self._faults.get(self._calls)
    embeddings = self._trainer.model.user_tower.trainable_variables[0]
    if fault == "nan":
      embeddings.assign(embeddings * np.nan)
    out = self._step(batch)
    if fault != "spike":
      return out
    embeddings.assign(embeddings * 50.0)
    return dict(out, loss=out["loss"] * 100.0)


def _values(variables) -> list:
  return [np.array(v.numpy()) for v in variables]


def test_a_non_finite_first_step_changes_no_weight_and_no_optimizer_slot(synthetic_data,
                                                                          tmp_path):
  """The very first step meets a user whose embedding row is infinite: its gradient is not
  finite, the guard says so, and the weights, the optimizer's slots and step
  counter, the queue and the frequency estimator are all left as they were."""
  trainer = loop.Trainer(small_config(loss__queue_warmup_steps=0), str(tmp_path),
                         synthetic_data)
  batch = next(iter(pipeline.training_dataset(
      synthetic_data, batch_size=256, seed=0,
      history_length=trainer.config.data.history_length)))
  table = trainer.model.user_tower.id_embedding.embeddings
  table.scatter_update(tf.IndexedSlices(tf.fill([1, table.shape[1]], np.inf),
                                        batch["user"]["user_id"][:1]))
  state = lambda: _values(trainer.model.variables) + _values(trainer.optimizer.variables())
  before = state()
  out = trainer.train_step(batch)
  # (The loss itself comes out finite here: one NaN query row does not reach the mean.)
  assert not np.isfinite(float(out["grad_norm"]))
  assert trainer.guard.check(float(out["loss"]), float(out["grad_norm"])).startswith(
      "non-finite")
  for was, now in zip(before, state()):
    np.testing.assert_array_equal(was, now)          # NaN == NaN here; nothing moved
  assert trainer._step() == 0   # pylint: disable=protected-access
  # The same batch without the infinite row is a healthy step that does move them.
  table.assign(tf.where(tf.math.is_finite(table), table, 0.0))
  healthy = state()
  trainer.train_step(batch)
  assert trainer._step() == 1   # pylint: disable=protected-access
  changed = [not np.array_equal(a, b) for a, b in zip(healthy, state())]
  assert sum(changed) > len(changed) // 2, changed


def test_divergence_guard_restores_after_a_non_finite_first_step(synthetic_data, tmp_path):
  trainer = loop.Trainer(small_config(train__epochs=1), str(tmp_path), synthetic_data)
  trainer.train_step = _Faulty(trainer, {1: "nan"})
  log = trainer.run()
  event, = log["divergence_events"]
  assert event["reason"].startswith("non-finite") and event["step"] == 0
  assert event["restored_step"] == 0 and event["batch"] == 0
  # Restored from the step-0 checkpoint, so every later step was finite; one batch skipped.
  assert log["final"]["steps"] == trainer.steps_per_epoch - 1
  assert np.isfinite(log["epochs"][0]["loss"])


def test_every_epoch_evaluates_with_one_traced_encoder(synthetic_data, tmp_path):
  """Per-epoch validation reuses the run's encoder instead of tracing new functions each
  epoch (which TensorFlow also reports as excessive retracing)."""
  trainer = loop.Trainer(small_config(train__epochs=3), str(tmp_path), synthetic_data)
  trainer.run()
  # At most a full and a last partial batch each, however many epochs were validated.
  assert 1 <= trainer.encoder._items.experimental_get_tracing_count() <= 2
  assert 1 <= trainer.encoder._users.experimental_get_tracing_count() <= 2


def test_encoders_of_several_loaded_models_log_no_retracing_warning(synthetic_data):
  """A pipeline process loads the model once per stage (training, ranking, index, export),
  each with its own Encoder; TensorFlow must not call that excessive retracing."""
  warnings = []

  class Collect(logging.Handler):
    def emit(self, record):
      warnings.append(record.getMessage())

  handler, config = Collect(), small_config()
  logging.getLogger("tensorflow").addHandler(handler)
  try:
    for _ in range(5):
      model, _ = loop.build_model(synthetic_data, config)
      encoder = Encoder(model, synthetic_data)
      encoder.items()
      for users in (3, 50):
        encoder.users(np.arange(1, users + 1, dtype=np.int32),
                      np.zeros((users, config.data.history_length), np.int32))
  finally:
    logging.getLogger("tensorflow").removeHandler(handler)
  assert not [w for w in warnings if "retracing" in w]


def test_divergence_guard_recovers_from_nan_and_spike(clean_run, synthetic_data, tmp_path):
  config = small_config(train__checkpoint_every_steps=20)
  trainer = loop.Trainer(config, str(tmp_path), synthetic_data)
  trainer.train_step = _Faulty(trainer, {45: "nan", 130: "spike"})
  log = trainer.run()
  events = log["divergence_events"]
  assert [e["reason"].split()[0] for e in events] == ["non-finite", "loss"]
  assert log["final"]["recoveries"] == 2
  clean = clean_run[0]["final"]["test"]["recall@20"]
  assert abs(log["final"]["test"]["recall@20"] - clean) < 0.05 * max(clean, 0.1) + 0.02


def test_divergence_guard_gives_up_after_max_recoveries(synthetic_data, tmp_path):
  config = small_config(train__checkpoint_every_steps=10, train__max_recoveries=1)
  trainer = loop.Trainer(config, str(tmp_path), synthetic_data)
  trainer.train_step = _Faulty(trainer, {15: "nan", 25: "nan"})
  with pytest.raises(DivergenceError, match="max_recoveries"):
    trainer.run()


def test_kill_minus_9_then_rerun_resumes_and_matches(clean_run, tmp_path):
  """A real SIGKILL mid-epoch: the rerun restores the checkpoint written before the kill
  (its first logged step lies past it), so it trains fewer steps than a full run, and ends
  with the clean run's step count and metrics."""
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "twotower.cli.train", f"--workdir={workdir}",
          "--dataset=synthetic", "--synthetic_users=600", "--synthetic_items=400",
          "--synthetic_interactions=24000", "--batch_size=256", "--epochs=6",
          "--queue_size=512", "--queue_warmup_steps=20", "--checkpoint_every_steps=25",
          "--refit=none", "--noprogress"]
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  # Wait until a mid-epoch checkpoint (step 100 is inside epoch 1 of 74 steps) exists.
  while time.time() < deadline and proc.poll() is None:
    if tf.train.latest_checkpoint(ckpt_dir) and int(
        tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1]) >= 100:
      break
    time.sleep(0.2)
  assert proc.poll() is None, "training ended before it could be killed"
  killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_events = _events_files(workdir)
  subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 timeout=600)
  with open(os.path.join(workdir, "metrics.json")) as f:
    resumed = json.load(f)
  clean = clean_run[0]
  assert killed_at % 25 == 0 and killed_at >= 100
  # The rerun's own events file: its training began after the restored checkpoint.
  rerun_file, = set(_events_files(workdir)) - set(killed_events)
  rerun_steps = _logged_steps(rerun_file)
  clean_steps = [step for path in _events_files(clean_run[1]) for step in _logged_steps(path)]
  assert rerun_steps and min(rerun_steps) > killed_at, (killed_at, rerun_steps[:3])
  assert len(rerun_steps) <= len(clean_steps) - killed_at // 10, (rerun_steps, clean_steps)
  assert resumed["final"]["steps"] == clean["final"]["steps"]
  np.testing.assert_allclose(resumed["final"]["test"]["recall@20"],
                             clean["final"]["test"]["recall@20"], atol=0.01)


def test_drift_is_logged_and_switches_the_queue_on(synthetic_data, tmp_path):
  config = small_config(train__epochs=1, train__drift_every_steps=10,
                        loss__queue_warmup_steps=0, loss__queue_warmup_drift=1e6)
  log = train_job.train(config, str(tmp_path / "on"), synthetic_data)
  drift = [d["drift"] for d in log["drift"]]
  assert [d["step"] for d in log["drift"]][:2] == [20, 30]   # step 10 only takes the sample
  assert all(0 < d < 2 for d in drift)   # unit vectors move by less than a diameter
  assert log["queue_enabled_at_step"] == 20
  config = small_config(train__epochs=1, train__drift_every_steps=10,
                        loss__queue_warmup_steps=0, loss__queue_warmup_drift=1e-9)
  log = train_job.train(config, str(tmp_path / "off"), synthetic_data)
  assert "queue_enabled_at_step" not in log


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(synthetic_data, tmp_path,
                                                                   caplog):
  workdir = str(tmp_path)
  first = train_job.train(small_config(train__epochs=2), workdir, synthetic_data)
  latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  with open(latest + ".data-00000-of-00001", "r+b") as f:   # a torn write, say
    f.write(b"\0garbage" * 64)
  log = train_job.train(small_config(train__epochs=3), workdir, synthetic_data)
  assert "unreadable" in caplog.text and os.path.basename(latest) in caplog.text
  assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2]
  assert log["epochs"][0] == first["epochs"][0]        # epoch 0 was not trained again
  assert log["final"]["steps"] == 3 * first["epochs"][0]["step"]
