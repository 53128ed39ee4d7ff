"""Data prepared once: twotower-train stores the arrays, every later job loads them.

The stored arrays must come back exactly (ids, splits, features, the raw item table the
export shows); a changed input file or data config must be a clean error, while a file
that was only touched is fine; and the jobs after training (rank, index, export, evaluate)
must never read or regenerate the log.
"""
import json
import os
import pathlib

import numpy as np
import pytest
from conftest import tiny_config

from twotower.config import DataConfig
from twotower.data import prepare as prepare_lib
from twotower.data import prepared_store, types
from twotower.workdir import Workdir, load_trained

INTERACTIONS = "".join(f"u{u}\ti{(u * 7 + k) % 40}\t{1000 + 10 * k}\t{1 + (u + k) % 5}\n"
                       for u in range(30) for k in range(8))


def _files(tmp_path: pathlib.Path) -> DataConfig:
  inter = tmp_path / "log.tsv"
  inter.write_text("user_id\titem_id\ttimestamp\trating\n" + INTERACTIONS)
  users = tmp_path / "users.tsv"
  users.write_text("user_id:token\tage:token\n"
                   + "".join(f"u{u}\t{u % 4}\n" for u in range(30)))
  items = tmp_path / "items.tsv"
  # Non-ASCII, separators and an empty value: the raw strings must survive byte for byte.
  items.write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n"
                   + "".join(f"i{i}\tTítulo {i} ñ|x\t{'' if i % 9 == 0 else 'g' + str(i % 3)}\n"
                             for i in range(45)), encoding="utf-8")
  return DataConfig(dataset=None, interactions=str(inter), user_features=str(users),
                    item_features=str(items), history_length=4)


def _stored(tmp_path, config):
  data = prepare_lib.prepare(prepare_lib.load_raw(config), config)
  vocab, prepared = str(tmp_path / "vocab"), str(tmp_path / "prepared")
  data.save_vocab(vocab)
  prepared_store.save(prepared, data, config)
  return data, vocab, prepared


def _same(a, b):
  assert type(a) is type(b)
  if isinstance(a, np.ndarray):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)
  else:
    assert a == b


def test_stored_arrays_round_trip_exactly(tmp_path):
  config = _files(tmp_path)
  data, vocab, prepared = _stored(tmp_path, config)
  back = prepared_store.load(prepared, vocab, config)
  assert back is not None
  assert back.name == data.name and back.stats == data.stats
  for field in ("user", "item", "timestamp", "label", "user_start", "history_end", "split"):
    _same(getattr(back.events, field), getattr(data.events, field))
  for kind in ("user_vocab", "item_vocab"):
    _same(getattr(back, kind).tokens, getattr(data, kind).tokens)
    assert getattr(back, kind).num_oov_buckets == getattr(data, kind).num_oov_buckets
  for kind in ("user_features", "item_features"):
    old, new = getattr(data, kind), getattr(back, kind)
    assert [s.describe() for s in new.specs] == [s.describe() for s in old.specs]
    assert all(np.array_equal(a.vocab.tokens, b.vocab.tokens)
               for a, b in zip(new.specs, old.specs))
    assert list(new.values) == list(old.values)
    for name in old.values:
      _same(new.values[name], old.values[name])
  old_t, new_t = data.item_table, back.item_table
  assert list(new_t.columns) == list(old_t.columns) and new_t.kinds == old_t.kinds
  for name in old_t.columns:
    assert new_t.columns[name].tolist() == old_t.columns[name].tolist()
  _same(new_t.line_numbers, np.asarray(old_t.line_numbers, np.int64))
  assert "Título 3 ñ|x" in new_t.columns["title"].tolist()
  # No pickles: every stored array loads with allow_pickle=False, none is an object array.
  with np.load(os.path.join(prepared, prepared_store.ARRAYS), allow_pickle=False) as npz:
    assert all(npz[name].dtype != object for name in npz.files)


def test_a_changed_input_file_or_config_is_a_clean_error(tmp_path):
  config = _files(tmp_path)
  _, vocab, prepared = _stored(tmp_path, config)
  # Touched (new mtime, same bytes): the sha256 says it is the same file.
  os.utime(config.interactions, ns=(1, 1))
  assert prepared_store.load(prepared, vocab, config) is not None
  # Same size, other contents.
  text = pathlib.Path(config.item_features).read_text(encoding="utf-8")
  pathlib.Path(config.item_features).write_text(text.replace("g1", "g2"), encoding="utf-8")
  with pytest.raises(types.DataError, match="--item_features file changed.*rerun twotower-train"):
    prepared_store.load(prepared, vocab, config)
  pathlib.Path(config.item_features).write_text(text, encoding="utf-8")
  # Rows appended to the log.
  with open(config.interactions, "a") as f:
    f.write("u1\ti3\t5000\t4\n")
  with pytest.raises(types.DataError, match="--interactions file changed"):
    prepared_store.load(prepared, vocab, config)
  # Another data config than the one the arrays were made from.
  config = _files(tmp_path)   # the original files again
  _, vocab, prepared = _stored(tmp_path, config)
  config.valid_fraction = 0.2
  with pytest.raises(types.DataError, match="--valid_fraction: 0.1 -> 0.2"):
    prepared_store.load(prepared, vocab, config)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  from twotower.jobs import train as train_job
  workdir = str(tmp_path_factory.mktemp("prepared_run"))
  config = tiny_config()
  config.train.refit = "none"   # what is stored is prepared before training, refit or not
  train_job.train(config, workdir)
  return workdir, config


def test_later_jobs_never_read_the_log(tiny_run, monkeypatch):
  from twotower.jobs import evaluate as evaluate_job
  from twotower.jobs import export as export_job
  from twotower.jobs import index as index_job
  from twotower.jobs.train_ranking import train_ranking
  workdir, config = tiny_run
  raw = prepare_lib.load_raw(config.data)

  def refuse(*_args, **_kwargs):
    raise AssertionError("a job after twotower-train read the log again")
  monkeypatch.setattr(prepare_lib, "load_raw", refuse)
  assert os.path.isdir(Workdir(workdir).prepared)
  train_ranking(workdir, epochs=1, progress=False, num_candidates=20, npratio=2)
  index_job.build_index(workdir, num_tuning_queries=20)
  export_dir = export_job.export(workdir, os.path.join(workdir, "export_test"))
  evaluate_job.evaluate_workdir(workdir)
  # The export still shows the raw item table, as read from the generator's strings.
  with open(os.path.join(export_dir, "item_features.jsonl"), encoding="utf-8") as f:
    first = json.loads(f.readline())
  table = raw.item_features
  row = list(table.columns["item_id"]).index(first["item_id"])
  assert first == {name: str(col[row]) for name, col in table.columns.items()}


def test_a_run_from_before_the_store_is_prepared_again(tiny_run, tmp_path):
  import shutil
  workdir, _ = tiny_run
  copy = str(tmp_path / "old_run")
  shutil.copytree(workdir, copy)
  shutil.rmtree(Workdir(copy).prepared)
  stored, again = load_trained(workdir), load_trained(copy)
  assert np.array_equal(stored.data.events.item, again.data.events.item)
  assert np.array_equal(stored.data.events.split, again.data.events.split)
