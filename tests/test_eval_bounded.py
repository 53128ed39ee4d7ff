"""Bounded evaluation: validation on a fixed sample of --eval_users users, the final test on
all test users (or --test_users), the best evaluation's validation figures reused.

Small synthetic data (80 users), so that a sample is a real subset and a run takes seconds.
"""
import dataclasses

import numpy as np
import pytest
from conftest import tiny_config

from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.jobs import train as train_job
from twotower.training import loop


@pytest.fixture(scope="module")
def data():
  config = tiny_config()
  return prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)


def _rows(queries, user):
  """A user's query: history, targets and exclusions."""
  row = int(np.flatnonzero(queries.user == user)[0])
  return (queries.history[row].tolist(), sorted(queries.targets.row(row).tolist()),
          sorted(queries.exclude.row(row).tolist()))


def test_sample_is_fixed_and_each_sampled_query_is_the_users_full_one(data):
  everyone = prepare_lib.eval_queries(data, splits.VALID, 5)
  sample = prepare_lib.eval_queries(data, splits.VALID, 5, max_users=20)
  assert len(sample.user) == 20 and sample.split_users == len(everyone.user) > 20
  again = prepare_lib.eval_queries(data, splits.VALID, 5, max_users=20)
  assert sample.user.tolist() == again.user.tolist()            # every evaluation
  assert set(sample.user) < set(everyone.user)
  for user in sample.user:
    assert _rows(sample, user) == _rows(everyone, user)
  # --seed does not move the sample: runs with different seeds meet the same users.
  configs = [tiny_config() for _ in range(2)]
  configs[1].train.seed = 7
  for config in configs:
    config.train.eval_users = 20
  a, b = (loop.split_queries(data, splits.VALID, c) for c in configs)
  assert a.user.tolist() == b.user.tolist() == sample.user.tolist()
  # A smaller sample is part of a larger one.
  assert set(prepare_lib.eval_queries(data, splits.VALID, 5, max_users=10).user) < set(sample.user)


def test_a_sample_as_large_as_the_split_is_the_whole_split(data):
  everyone = prepare_lib.eval_queries(data, splits.TEST, 5)
  for max_users in (len(everyone.user), 10 ** 6):
    same = prepare_lib.eval_queries(data, splits.TEST, 5, max_users=max_users)
    assert same.user.tolist() == everyone.user.tolist()
    assert same.history.tolist() == everyone.history.tolist()
    assert same.targets.indices.tolist() == everyone.targets.indices.tolist()
    assert same.exclude.indices.tolist() == everyone.exclude.indices.tolist()
    assert same.split_users == len(everyone.user)


def test_training_validates_the_sample_and_reuses_the_best_figures(data, tmp_path, monkeypatch):
  calls = []
  real = loop.split_metrics

  def counted(model, data, split_code, config, encoder=None, queries=None):
    result = real(model, data, split_code, config, encoder, queries)
    calls.append((split_code, queries.user.tolist() if queries is not None else None))
    return result

  monkeypatch.setattr(loop, "split_metrics", counted)
  config = tiny_config()
  config.train = dataclasses.replace(config.train, epochs=1, eval_users=20, test_users=0,
                                     eval_every_steps=3)
  log = train_job.train(config, str(tmp_path), data)
  records, final = log["epochs"], log["final"]
  valid_calls = [users for split, users in calls if split == splits.VALID]
  # One validation per record (every 3 steps and at the end of the epoch), every one on
  # the same 20 users; none after training.
  assert [r["step"] for r in records][:2] == [3, 6]
  assert len(valid_calls) == len(records) >= 3
  assert all(users == valid_calls[0] for users in valid_calls) and len(valid_calls[0]) == 20
  everyone = len(prepare_lib.eval_queries(data, splits.VALID, 5).user)
  for record in records:
    valid = record["valid"]
    assert valid["num_users"] + valid["num_users_skipped"] == 20
    assert valid["num_users_in_split"] == everyone
  [best] = [r for r in records if r.get("best") and r["step"] == final["best_step"]]
  assert final["valid"] == best["valid"]
  # The final test covers every test user, the baseline the same ones.
  test_users = len(prepare_lib.eval_queries(data, splits.TEST, 5).user)
  for key in ("test", "most_popular_test"):
    figures = final[key]
    assert figures["num_users"] + figures["num_users_skipped"] == test_users
    assert figures["num_users_in_split"] == test_users
  assert [split for split, _ in calls].count(splits.TEST) == 1


def test_test_users_samples_the_final_test(data, tmp_path):
  config = tiny_config()
  config.train = dataclasses.replace(config.train, eval_users=0, test_users=10)
  final = train_job.train(config, str(tmp_path), data)["final"]
  assert final["test"]["num_users"] + final["test"]["num_users_skipped"] == 10
  assert final["valid"]["num_users_in_split"] == (final["valid"]["num_users"]
                                                  + final["valid"]["num_users_skipped"])


@pytest.mark.parametrize("field, flag", [("eval_users", "--eval_users"),
                                         ("test_users", "--test_users"),
                                         ("eval_every_steps", "--eval_every_steps")])
def test_negative_values_are_refused_naming_the_flag(field, flag):
  from twotower.errors import ConfigError
  config = tiny_config()
  setattr(config.train, field, -1)
  with pytest.raises(ConfigError, match=flag):
    config.validate()
  setattr(config.train, field, 0)   # 0: all users / once per epoch
  config.validate()
