"""An index that follows a retrained corpus (twotower.index.update, build_index's
update_from): items added are found, deleted ones never return, moved ones re-inserted,
the result saves and loads, too large a change rebuilds, a mismatching run is refused."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import tiny_config
from twotower import index as index_lib
from twotower.errors import UserError
from twotower.index import update as update_lib
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job
from twotower.jobs import train as train_job


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(prefix, n):
  return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _top1(index, vectors):
  """Id of each vector's best match, searching every leaf (no approximation misses)."""
  leaves = index.params.get("num_leaves", 1)
  rows, _ = index.search(vectors, 1, leaves_to_search=leaves,
                         pre_reorder_num_neighbors=min(100, index.num_items))
  return index.item_ids[rows[:, 0]]


@pytest.fixture(scope="module")
def saved_scann(tmp_path_factory):
  """A ScaNN index over 3,000 random unit vectors with ids, saved; and its vectors."""
  rng = np.random.default_rng(0)
  items = _unit(rng.standard_normal((3000, 16)))
  index = index_lib.build_searcher(items, sample_queries=_unit(rng.standard_normal((100, 16))),
                                   brute_force_below=0, k=10)
  index.item_ids = _ids("i", len(items))
  directory = str(tmp_path_factory.mktemp("old_index"))
  index_lib.save_index(index, directory)
  return directory, items


def test_update_adds_deletes_and_moves_and_the_result_reloads(saved_scann, tmp_path):
  directory, items = saved_scann
  rng = np.random.default_rng(1)
  old = index_lib.load_index(directory)
  # Next day: 60 items gone (rows spread over the corpus, the last one among them), 40 new
  # (into 40 of the freed rows; the other 20 deleted), 30 moved far, 20 moved below the
  # tolerance, the rest identical.
  gone = np.concatenate([rng.choice(2999, 59, replace=False), [2999]])
  keep = np.setdiff1d(np.arange(3000), gone)
  new_ids = np.concatenate([_ids("i", 3000)[keep], _ids("new", 40)])
  new = np.concatenate([items[keep], _unit(rng.standard_normal((40, 16)))])
  far, near = np.arange(0, 30), np.arange(100, 120)
  new[far] = _unit(rng.standard_normal((30, 16)))
  new[near] = _unit(new[near] + 1e-3 * rng.standard_normal((20, 16)).astype(np.float32))
  d = update_lib.diff(old.item_ids, old.embeddings, new_ids, new, tolerance=1e-3)
  assert d.counts() == {"added": 40, "deleted": 60, "moved": 30, "unchanged": 2910}
  updated = update_lib.apply(old, new_ids, new, d)
  assert updated.searcher.size() == updated.num_items == len(new_ids)
  assert sorted(updated.item_ids) == sorted(new_ids)
  # Every item is found by its own (current) vector: rows and ids stayed in step.
  truth = update_lib.aligned(updated, new_ids, new)
  np.testing.assert_array_equal(_top1(updated, truth), updated.item_ids)
  # Deleted items never come back, even for a query equal to their old vector.
  found, _ = updated.search(items[gone], 50)
  assert not set(updated.item_ids[found[found >= 0]]) & set(_ids("i", 3000)[gone])
  # Moved beyond the tolerance: re-inserted with the new vector; below it: kept as indexed.
  row = {t: r for r, t in enumerate(updated.item_ids)}
  np.testing.assert_array_equal(updated.embeddings[[row[t] for t in new_ids[far]]], new[far])
  stale_old_rows = [int(t[1:]) for t in new_ids[near]]
  np.testing.assert_array_equal(updated.embeddings[[row[t] for t in new_ids[near]]],
                                items[stale_old_rows])
  assert 0 < updated.params["update_tolerance"] <= 1e-3
  update_lib.check_matches(updated, new_ids, new)   # within the recorded staleness
  # Saved and reloaded: load_index checks the searcher's own copy against the embeddings.
  out = str(tmp_path / "updated")
  os.makedirs(out)
  index_lib.save_index(updated, out)
  loaded = index_lib.load_index(out)
  assert loaded.fingerprint == index_lib.fingerprint(updated.embeddings)
  np.testing.assert_array_equal(_top1(loaded, truth), updated.item_ids)
  for key in ("leaves_to_search", "pre_reorder_num_neighbors", "num_leaves"):
    assert loaded.params[key] == old.params[key]   # tuned knobs kept


def test_an_added_item_is_retrieved_first(saved_scann):
  directory, items = saved_scann
  old = index_lib.load_index(directory)
  extra = _unit(np.random.default_rng(2).standard_normal((1, 16)))
  new_ids = np.concatenate([old.item_ids, ["fresh"]])
  new = np.concatenate([items, extra])
  updated = update_lib.apply(old, new_ids, new, update_lib.diff(
      old.item_ids, old.embeddings, new_ids, new, tolerance=0.0))
  rows, _ = updated.search(extra, 5)   # the tuned knobs, not an exhaustive search
  assert updated.item_ids[rows[0, 0]] == "fresh"


def test_a_brute_force_index_takes_the_new_arrays():
  rng = np.random.default_rng(3)
  old = index_lib.Index(index_lib.BRUTE_FORCE, _unit(rng.standard_normal((50, 8))),
                        params={"tuned_k": 10}, item_ids=_ids("i", 50))
  new_ids, new = _ids("j", 40), _unit(rng.standard_normal((40, 8)))
  updated = update_lib.apply(old, new_ids, new, update_lib.diff(
      old.item_ids, old.embeddings, new_ids, new, 0.0))
  assert updated.kind == index_lib.BRUTE_FORCE
  np.testing.assert_array_equal(updated.embeddings, new)
  np.testing.assert_array_equal(updated.item_ids, new_ids)


# ----------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny trained run (its ScaNN index not built yet) and its item ids and vectors."""
  from twotower.model.encoding import Encoder
  from twotower.workdir import load_trained
  workdir = str(tmp_path_factory.mktemp("run") / "workdir")
  os.makedirs(workdir)
  train_job.train(tiny_config(), workdir)
  run = load_trained(workdir)
  return (workdir, run.data.item_vocab.tokens, Encoder(run.model, run.data).items(),
          run.data.user_vocab.tokens)


def _old_run(root, ids, vectors):
  """A run directory holding only a ScaNN index over ``vectors`` (what --update_from reads)."""
  rng = np.random.default_rng(4)
  index = index_lib.build_searcher(vectors, sample_queries=_unit(
      rng.standard_normal((50, vectors.shape[1]))), brute_force_below=0, k=10)
  index.item_ids = np.asarray(ids, dtype=object)
  os.makedirs(os.path.join(root, "index"))
  index_lib.save_index(index, os.path.join(root, "index"))
  return str(root)


def _yesterday(ids, vectors):
  """The corpus as an earlier run indexed it: 3 of today's items missing, 4 that are gone
  today, 2 that have moved since."""
  rng = np.random.default_rng(5)
  old_ids = np.concatenate([ids[3:], _ids("gone", 4)])
  old = np.concatenate([vectors[3:], _unit(rng.standard_normal((4, vectors.shape[1])))])
  old[:2] = _unit(rng.standard_normal((2, vectors.shape[1])))
  return old_ids, old


def test_build_index_updates_from_an_earlier_run_and_exports(trained, tmp_path):
  workdir, ids, vectors, users = trained
  old_run = _old_run(tmp_path / "old", *_yesterday(ids, vectors))
  report = index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=50,
                                 update_from=old_run, update_max_changed_fraction=0.2)
  update = report["update"]
  assert update["mode"] == "update", update
  assert (update["added"], update["deleted"], update["moved"]) == (3, 4, 2)
  assert update["unchanged"] == len(ids) - 5
  assert update["seconds"] > 0 and 0 <= update["recall@10"] <= 1
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["index"]["update"] == update
  index = index_lib.load_index(os.path.join(workdir, "index"))
  assert sorted(index.item_ids) == sorted(ids)
  assert not {"gone0", "gone1", "gone2", "gone3"} & set(index.item_ids)
  np.testing.assert_array_equal(_top1(index, vectors[:3]), ids[:3])   # the added ones
  # The export follows the index's row order (items and their table by id).
  from twotower.serving import Recommender
  rec = Recommender.load(export_job.export(workdir, str(tmp_path / "export")))
  assert rec.index.fingerprint == index.fingerprint
  got = {item for user in users[:5] for item, _ in rec.recommend({"user_id": user}, k=30)}
  assert got and got <= set(ids)


def test_build_index_rebuilds_when_too_much_changed(trained, tmp_path):
  workdir, ids, vectors, _ = trained
  old_run = _old_run(tmp_path / "old", *_yesterday(ids, vectors))
  report = index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=50,
                                 update_from=old_run, update_max_changed_fraction=0.01)
  assert report["update"]["mode"] == "rebuild"
  assert "update_max_changed_fraction" in report["update"]["reason"]
  index = index_lib.load_index(os.path.join(workdir, "index"))
  np.testing.assert_array_equal(index.item_ids, ids)   # a fresh build: corpus order
  assert "update_tolerance" not in index.params


def test_update_from_a_run_of_another_dimension_is_a_clean_error(trained, tmp_path):
  workdir, ids, vectors, _ = trained
  old_run = _old_run(tmp_path / "old8", ids, _unit(np.random.default_rng(6).standard_normal(
      (len(ids), 8))))
  with pytest.raises(UserError, match=f"--update_from={old_run}.*8-dimensional"):
    index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=50,
                          update_from=old_run)
  empty = tmp_path / "no_index"
  empty.mkdir()
  with pytest.raises(UserError, match="holds no candidate index"):
    index_job.build_index(workdir, update_from=str(empty))
  shutil.rmtree(empty)


def test_the_cli_defaults_are_the_jobs():
  """twotower-index's flags default to the measured thresholds build_index uses (read in a
  subprocess: defining the CLI's flags here would clash with other jobs' flags)."""
  code = ("import twotower.cli.index\nfrom absl import flags\n"
          "print(flags.FLAGS['update_tolerance'].default, "
          "flags.FLAGS['update_max_changed_fraction'].default)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == [repr(index_job.DEFAULT_UPDATE_TOLERANCE),
                                repr(index_job.DEFAULT_UPDATE_MAX_CHANGED_FRACTION)]
