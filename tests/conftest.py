"""Shared test setup: legacy Keras before TensorFlow, quiet logs."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

import twotower  # noqa: E402,F401


def tiny_config():
  """A model small enough to train in seconds, for tests about what surrounds training."""
  from twotower.config import Config
  config = Config()
  config.data.dataset = "synthetic"
  config.data.synthetic_users = 80
  config.data.synthetic_items = 150
  config.data.synthetic_interactions = 2500
  config.data.history_length = 5
  config.model.embedding_dim = 16
  config.model.id_embedding_dim = 16
  config.model.feature_embedding_dim = 8
  config.model.user_layers = (32,)
  config.model.item_layers = (32,)
  config.train.batch_size = 256
  config.train.epochs = 1
  config.train.progress = False
  config.train.eval_ks = (10,)
  config.train.early_stopping_metric = "recall@10"
  config.loss.queue_size = 0
  config.train.refit = "none"   # tests of the refit itself say so (tests/test_refit.py)
  return config


def build_tiny_export(root, seed: int = 0) -> str:
  """Trains tiny_config() with ``seed`` under ``root``, indexes it with ScaNN and exports it;
  returns the export directory."""
  from twotower.jobs import export as export_job
  from twotower.jobs import index as index_job
  from twotower.jobs import train as train_job
  workdir = str(root / "workdir")
  os.makedirs(workdir)
  config = tiny_config()
  config.train.seed = seed
  train_job.train(config, workdir)
  index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=50)
  return export_job.export(workdir, str(root / "export"))


@pytest.fixture(scope="session")
def tiny_scann_export(tmp_path_factory):
  """A real export with a ScaNN searcher (under index/) of a tiny trained model; tests that
  tamper with it work on copies."""
  return build_tiny_export(tmp_path_factory.mktemp("tiny_export"))
