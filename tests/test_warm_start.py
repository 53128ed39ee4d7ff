"""Warm start (--init_from): ids keep their rows, new ids get rows, the optimizer, queue and
frequency estimator carry over, shape changes are clean errors, lineage is recorded, and a
rerun resumes its own checkpoints."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from twotower import fileio
from twotower.data import features as features_lib
from twotower.data import pipeline, types
from twotower.data.vocab import Vocabulary
from twotower.errors import ConfigError
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job
from twotower.jobs import train as train_job
from twotower.training import loop, warm_start
from twotower.training import refit as refit_lib
from twotower.workdir import Workdir, load_trained

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
ITEM_TABLE = "model/user_tower/_item_id_embedding/embeddings" + VALUE


def _parent_config():
  config = tiny_config()
  config.loss.queue_size = 256
  config.loss.frequency = "streaming"
  config.train.epochs = 2
  return config


def _child_config(parent_dir):
  """Tomorrow's log: more users, items and events (synthetic ids u<k>/i<k> overlap)."""
  config = _parent_config()
  config.data.synthetic_users = 100
  config.data.synthetic_items = 180
  config.data.synthetic_interactions = 3000
  config.train.epochs = 1
  config.train.init_from = parent_dir
  return config


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("warm") / "parent")
  train_job.train(_parent_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def started(parent, tmp_path_factory):
  """A warm-started trainer right after the warm start, before its first step."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop.Trainer, "run", lambda self: self)
    return train_job.train(_child_config(parent),
                           str(tmp_path_factory.mktemp("warm") / "started"))


def test_extend_keeps_ids_appends_new_and_keeps_vanished():
  old = Vocabulary(["b", "a", "gone"], num_oov_buckets=2)
  new = old.extend(np.array(["a", "z", "b", "y", "z"], dtype=object))
  assert list(new.tokens) == ["b", "a", "gone", "z", "y"]   # new ones by count, then token
  np.testing.assert_array_equal(new.lookup(np.array(["b", "a", "gone"], dtype=object)),
                                old.lookup(np.array(["b", "a", "gone"], dtype=object)))
  assert new.num_oov_buckets == 2


def test_old_ids_keep_their_rows_and_new_ids_copy_the_oov_row(parent, started):
  best = tf.train.load_checkpoint(Workdir(parent).best)
  parent_vocab = features_lib.SavedVocabularies.load(Workdir(parent).vocab)
  data = started.data
  for saved, vocab, table, key in (
      (parent_vocab.item_vocab, data.item_vocab, started.model.item_tower.id_embedding,
       ITEM_TABLE),
      (parent_vocab.user_vocab, data.user_vocab, started.model.user_tower.id_embedding,
       "model/user_tower/id_embedding/embeddings" + VALUE)):
    theirs, mine = best.get_tensor(key), table.embeddings.numpy()
    assert len(vocab) > len(saved)   # the fixture's day 2 brings new ids
    old = saved.tokens
    np.testing.assert_array_equal(vocab.lookup(old), saved.lookup(old))
    np.testing.assert_array_equal(mine[:len(saved)], theirs)   # bit for bit
    np.testing.assert_array_equal(mine[len(saved):],
                                  np.repeat(theirs[1:2], len(vocab) - len(saved), 0))
  spec = {s.name: s for s in data.item_features.specs}["tags"]
  parent_tags = {s.name: s for s in parent_vocab.item_specs}["tags"].vocab
  layer = started.model.item_tower.features._embeddings["tags"]
  theirs = best.get_tensor("model/item_tower/features/_embeddings/tags/embeddings" + VALUE)
  np.testing.assert_array_equal(layer.embeddings.numpy()[:len(parent_tags)], theirs)
  assert len(spec.vocab) >= len(parent_tags)


def test_optimizer_slots_step_queue_and_frequency_are_carried(parent, started):
  latest = tf.train.load_checkpoint(tf.train.latest_checkpoint(Workdir(parent).checkpoints))
  optimizer, model = started.optimizer, started.model
  assert latest.get_tensor("optimizer/_iterations" + VALUE) > 0
  assert optimizer.iterations.numpy() == 0   # the run counts its own steps
  owners = warm_start._slot_owners(optimizer, model.trainable_variables)
  table = model.item_tower.id_embedding.embeddings
  slots = [s for s in optimizer.variables if owners.get(s.ref()) is table]
  assert len(slots) == 2   # Adam's m and v
  paths = {id(v): k for k, v in warm_start.variable_paths(model=model,
                                                           optimizer=optimizer).items()}
  rows = len(features_lib.SavedVocabularies.load(Workdir(parent).vocab).item_vocab)
  for slot in slots:
    theirs = latest.get_tensor(paths[id(slot)])
    assert np.abs(theirs).sum() > 0
    np.testing.assert_array_equal(slot.numpy()[:rows], theirs)
    assert not slot.numpy()[rows:].any()   # new rows: fresh moments
  queue = model.task.queue
  np.testing.assert_array_equal(queue.ids.numpy(),
                                latest.get_tensor("model/task/queue/ids" + VALUE))
  np.testing.assert_array_equal(queue.embeddings.numpy(),
                                latest.get_tensor("model/task/queue/embeddings" + VALUE))
  assert model.frequency.step.numpy() == latest.get_tensor("model/frequency/step" + VALUE)


def test_regrown_frequency_estimator_keeps_uncollided_estimates(parent, started):
  """The bucket count follows the item vocabulary, so the estimator is re-hashed: an old
  item alone in its new buckets keeps its estimate exactly."""
  latest = tf.train.load_checkpoint(tf.train.latest_checkpoint(Workdir(parent).checkpoints))
  gap = latest.get_tensor("model/frequency/gap" + VALUE)
  last = latest.get_tensor("model/frequency/last_seen" + VALUE)
  estimator = started.model.frequency
  assert estimator.gap.shape[1] > gap.shape[1]
  old = np.arange(gap.shape[1])
  was = warm_start.StreamingFrequencyEstimator(gap.shape[1], gap.shape[0])._buckets(
      tf.constant(old, tf.int64)).numpy()
  seen = last[np.arange(gap.shape[0])[:, None], was].min(axis=0) > 0
  now = estimator._buckets(tf.constant(old, tf.int64)).numpy()
  alone = seen.copy()
  for h in range(now.shape[0]):
    counts = np.bincount(now[h][seen], minlength=estimator.gap.shape[1])
    alone &= counts[now[h]] == 1
  assert alone.sum() >= 10
  expected = 1.0 / gap[np.arange(gap.shape[0])[:, None], was].max(axis=0)
  got = estimator.probability(tf.constant(old, tf.int64)).numpy()
  np.testing.assert_allclose(got[alone], expected[alone], rtol=1e-6)


def test_changed_embedding_dim_is_a_clean_error(parent, tmp_path):
  config = _child_config(parent)
  config.model.embedding_dim = 8
  with pytest.raises(ConfigError, match=r"--embedding_dim is 8 here but 16 in the parent"):
    train_job.train(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")   # refused before anything was written


def test_changed_feature_set_is_a_clean_error():
  table = types.Table("items.tsv", {"item_id": np.array(["i1"], object),
                                    "colour": np.array(["red"], object)},
                      {"colour": types.TOKEN}, np.array([2]))
  parent_specs = [features_lib.FeatureSpec("category", types.TOKEN, Vocabulary(["x"]))]
  with pytest.raises(ConfigError, match=r"item features changed.*category.*colour"):
    features_lib.build_specs(table, "item_id", max_tokens=4, num_oov_buckets=1,
                             base=parent_specs)


def test_metrics_record_the_parent_and_a_rerun_resumes_its_own_checkpoints(parent, tmp_path):
  workdir = str(tmp_path / "child")
  log = train_job.train(_child_config(parent), workdir)
  best = Workdir(parent).best + ".index"
  assert log["parent"]["path"] == os.path.abspath(parent)
  assert log["parent"]["fingerprint"] == "sha256:" + fileio.sha256_file(best)
  assert log["parent"]["data_time_range"] == fileio.read_json(
      Workdir(parent).metrics)["data_time_range"]
  assert log["data_time_range"]["min"] <= log["data_time_range"]["max"]
  assert log["parent"]["steps"] == fileio.read_json(Workdir(parent).metrics)["final"]["steps"]
  assert fileio.read_json(Workdir(workdir).metrics)["parent"] == log["parent"]
  # Downstream jobs rebuild the same extended ids from the run's own vocabularies.
  run = load_trained(workdir)
  assert list(run.data.item_vocab.tokens) == list(
      features_lib.SavedVocabularies.load(Workdir(workdir).vocab).item_vocab.tokens)
  # Its steps are its own: one epoch of its data.
  assert log["final"]["steps"] == pipeline.steps_per_epoch(run.data, 256, False)
  # The export says where its model came from.
  index_job.build_index(workdir)
  manifest = fileio.read_json(os.path.join(export_job.export(workdir), "manifest.json"))
  assert manifest["parent"] == log["parent"]
  assert manifest["data_time_range"] == log["data_time_range"]

  # A rerun resumes: no second warm start, the parent not even needed any more.
  moved = str(tmp_path / "parent_moved")
  shutil.copytree(parent, moved)
  shutil.rmtree(parent)
  try:
    config = _child_config(parent)
    config.train.epochs = 2
    again = train_job.train(config, workdir)
  finally:
    shutil.copytree(moved, parent)
  assert [e["epoch"] for e in again["epochs"]] == [0, 1]
  assert again["epochs"][0] == log["epochs"][0]
  assert again["epochs"][1]["step"] > again["epochs"][0]["step"]
  assert again["parent"] == log["parent"]


def test_the_refit_starts_from_the_warm_started_state(parent, tmp_path, monkeypatch):
  seen = {}

  def first_look(trainer):   # the refit's model as it would take its first step
    seen["items"] = trainer.model.item_tower.id_embedding.embeddings.numpy()
    seen["iterations"] = int(trainer.optimizer.iterations.numpy())
    return {"final": {"steps": 0, "seconds": 0.0, "recoveries": 0}}

  monkeypatch.setattr(refit_lib.RefitTrainer, "run", first_look)
  config = _child_config(parent)
  config.train.refit = "train_valid"
  config.train.refit_continue_epochs = 0.0   # a retrain (a continuation starts elsewhere)
  workdir = str(tmp_path / "child")
  train_job.train(config, workdir)
  init = tf.train.load_checkpoint(os.path.join(Workdir(workdir).checkpoints,
                                               warm_start.INIT))
  np.testing.assert_array_equal(seen["items"], init.get_tensor(ITEM_TABLE))
  rows = len(features_lib.SavedVocabularies.load(Workdir(parent).vocab).item_vocab)
  np.testing.assert_array_equal(seen["items"][:rows], tf.train.load_checkpoint(
      Workdir(parent).best).get_tensor(ITEM_TABLE))
  assert seen["iterations"] == 0
