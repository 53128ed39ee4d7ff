"""twotower/config.py: every config's one JSON round-trip, validation naming the flag,
Literal-typed choices, and no TensorFlow at import."""
import json
import subprocess
import sys
import typing

import pytest

from twotower import config as config_lib
from twotower.config import Config, RankingConfig


def test_config_round_trips_through_json_with_tuples_kept(tmp_path):
  config = Config()
  config.model.user_layers, config.train.eval_ks = (32, 16), (5, 50)
  config.loss.frequency, config.data.dataset = "streaming", None
  path = tmp_path / "config.json"
  path.write_text(config.to_json())
  loaded = Config.load(str(path))
  assert loaded == config and loaded.model.user_layers == (32, 16)


def test_ranking_config_round_trips_through_json(tmp_path):
  config = RankingConfig(layers=(64,), rating_threshold=4.0, loss="softmax",
                         max_recoveries=1, recovery_lr_factor=0.1)
  path = tmp_path / "config.json"
  path.write_text(config.to_json())
  assert RankingConfig.load(str(path)) == config
  assert json.loads(config.to_json())["layers"] == [64]


@pytest.mark.parametrize("make", [lambda: Config.from_dict({"train": {"batch": 3}}),
                                  lambda: RankingConfig.from_dict({"npratioo": 3})])
def test_unknown_keys_are_named(make):
  with pytest.raises(ValueError, match="unknown .*'(batch|npratioo)'"):
    make()


@pytest.mark.parametrize("field,value,flag", [
    ("npratio", 100, r"--npratio \(100\) must be below --num_candidates"),
    ("loss", "hinge", "--loss"),
    ("examples", "test", "--examples"),
    ("layers", (64, 0), "--layers"),
    ("learning_rate", float("nan"), "--learning_rate"),
    ("optimizer", "sgd", "--optimizer"),
    ("max_recoveries", -1, "--max_recoveries"),
    ("recovery_lr_factor", 1.5, "--recovery_lr_factor"),
    ("divergence_spike_factor", 1.0, "--divergence_spike_factor"),
    ("patience", -1, "--patience"),
])
def test_ranking_config_validate_names_the_flag(field, value, flag):
  RankingConfig().validate()
  with pytest.raises(ValueError, match=flag):
    RankingConfig(**{field: value}).validate()


def test_choices_are_literal_types_and_validated_against_them():
  hints = typing.get_type_hints(config_lib.TrainConfig)
  assert typing.get_args(hints["optimizer"]) == config_lib.OPTIMIZERS
  assert typing.get_args(hints["distribution"]) == ("none", "mirrored", "multi_worker")
  dataset = typing.get_type_hints(config_lib.DataConfig)["dataset"]
  assert typing.get_args(typing.get_args(dataset)[0]) == ("movielens-100k", "synthetic")
  assert typing.get_args(typing.get_type_hints(config_lib.LossConfig)["frequency"]) == (
      "static", "streaming")
  ranking = typing.get_type_hints(RankingConfig)
  assert set(typing.get_args(ranking["loss"])) == {"bce", "softmax"}
  assert set(typing.get_args(ranking["examples"])) == {"train", "valid"}
  config = Config()
  config.train.distribution = "tpu"
  with pytest.raises(ValueError, match=r"--distribution must be one of \('none'"):
    config.validate()
  config = Config()
  config.data.dataset = "movielens-1m"
  with pytest.raises(ValueError, match="--dataset must be one of"):
    config.validate()
  config.data.interactions = "events.csv"     # files instead of a built-in dataset
  config.validate()


def test_hash_limit_matches_the_streaming_estimator():
  from twotower.model.frequency import StreamingFrequencyEstimator
  assert config_lib.MAX_FREQUENCY_HASHES == len(
      StreamingFrequencyEstimator._MULTIPLIERS)  # pylint: disable=protected-access


def test_config_imports_no_tensorflow():
  code = ("import sys, twotower.config; "
          "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
