"""Candidate index on raw arrays: tuning to a recall target, exact search, persistence,
integrity checks and atomic directory replacement."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from twotower import fileio, topk
from twotower import index as index_lib
from twotower.data.itemsets import ItemSets


def planted(n, dim=16, topics=60, queries=400, noise=1.0, seed=0):
  """Clustered unit vectors and two-interest queries (as experiments/bench_index.py)."""
  rng = np.random.default_rng(seed)
  norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  centers = norm(rng.standard_normal((topics, dim)))
  items = norm(centers[rng.integers(topics, size=n)]
               + noise / np.sqrt(dim) * rng.standard_normal((n, dim)))
  q = norm(centers[rng.integers(topics, size=queries)]
           + 0.5 * centers[rng.integers(topics, size=queries)]
           + noise / np.sqrt(dim) * rng.standard_normal((queries, dim)))
  return items, q


@pytest.fixture(scope="module")
def scann_index():
  items, queries = planted(30000)
  index = index_lib.build_searcher(items, recall_target=0.95, sample_queries=queries[:200],
                                   k=10, brute_force_below=1000)
  return index, queries[200:]


def test_tuned_searcher_reaches_the_recall_target_on_held_out_queries(scann_index):
  index, held_out = scann_index
  assert index.kind == index_lib.SCANN
  p = index.params
  assert p["num_leaves"] == index_lib.default_num_leaves(30000)
  assert 1 <= p["leaves_to_search"] <= p["num_leaves"]
  assert p["tuning_recall"] >= 0.95
  exact, _ = index.search(held_out, 10, exact=True)
  approx, scores = index.search(held_out, 10)
  assert index_lib.recall(approx, exact) >= 0.93   # held-out: target minus noise
  assert np.all(np.diff(scores, axis=1) <= 1e-6)   # best first
  report = index_lib.measure(index, held_out, single_queries=20,
                             brute_force_single_queries=5, repeats=1)
  for key in ("recall@10", "recall@100", "qps_single", "qps_batched",
              "brute_force_qps_single", "brute_force_qps_batched"):
    assert report[key] > 0, key


def test_a_lower_recall_target_tunes_a_cheaper_searcher(scann_index):
  """Two targets on the same corpus: each searcher's recall on its tuning queries clears its
  target plus two standard errors (what _tune promises), held-out queries reach the target
  within noise, and the lower target settles lower (a tuner ignoring it would not)."""
  high, held_out = scann_index
  items, queries = planted(30000)
  low = index_lib.build_searcher(items, recall_target=0.8, sample_queries=queries[:200],
                                 k=10, brute_force_below=1000)
  exact, _ = high.search(held_out, 10, exact=True)
  measured = {}
  for target, index in ((0.8, low), (0.95, high)):
    p = index.params
    assert p["recall_target"] == target
    assert p["tuning_recall"] >= min(target + 2 * p["tuning_stderr"], 1.0) - 1e-4, p
    measured[target] = index_lib.recall(index.search(held_out, 10)[0], exact)
    assert measured[target] >= target - 0.02, (target, measured)
  assert measured[0.95] >= measured[0.8], measured
  assert low.params["tuning_recall"] < high.params["tuning_recall"], (low.params, high.params)


def test_brute_force_below_the_threshold_and_on_request():
  items, queries = planted(500, queries=20)
  small = index_lib.build_searcher(items, sample_queries=queries)
  assert small.kind == index_lib.BRUTE_FORCE and small.searcher is None
  items, queries = planted(3000, queries=20)
  forced = index_lib.build_searcher(items, sample_queries=queries, brute_force_below=100,
                                    force_brute_force=True)
  assert forced.kind == index_lib.BRUTE_FORCE
  rows, _ = forced.search(queries, 10)
  expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(rows, expected)


def test_exact_top_k_breaks_ties_by_row_and_honours_exclusions():
  emb = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0.5, 0]], np.float32)
  q = np.array([[1, 0]], np.float32)
  brute_force = index_lib.Index(index_lib.BRUTE_FORCE, emb)
  rows, scores = brute_force.search(q, 2)
  np.testing.assert_array_equal(rows, [[0, 1]])
  rows, _ = brute_force.search(q, 3, exclude=ItemSets.from_lists([[1]]))
  np.testing.assert_array_equal(rows, [[0, 3, 4]])
  rows, scores = brute_force.search(q, 10)   # k > N: everything, best first
  np.testing.assert_array_equal(rows, [[0, 1, 3, 4, 2]])
  # Chunked and unchunked agree.
  items, queries = planted(2000, queries=50)
  a, _ = topk.top_k_items(queries, items, 7)
  b, _ = topk.top_k_items(queries, items, 7, max_chunk_elements=3000)
  np.testing.assert_array_equal(a, b)


def test_rejects_bad_embeddings():
  with pytest.raises(ValueError, match="non-empty"):
    index_lib.build_searcher(np.zeros((0, 4), np.float32))
  bad = np.ones((10, 4), np.float32)
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    index_lib.build_searcher(bad)
  with pytest.raises(ValueError, match="sample_queries"):
    index_lib.build_searcher(np.ones((50, 4), np.float32), brute_force_below=10)


def _saved(index, directory):
  directory = str(directory)
  os.makedirs(directory, exist_ok=True)
  index.item_ids = np.array([f"item{i}" for i in range(index.num_items)], dtype=object)
  index_lib.save_index(index, directory)
  return directory


def test_save_and_load_round_trip_with_relative_paths(scann_index, tmp_path):
  index, held_out = scann_index
  first = _saved(index, tmp_path / "a")
  moved = str(tmp_path / "b")
  shutil.move(first, moved)   # serialized with relative paths: the directory can move
  with open(os.path.join(moved, index_lib.SEARCHER, "scann_assets.pbtxt")) as f:
    assert str(tmp_path) not in f.read()
  loaded = index_lib.load_index(moved)
  assert loaded.kind == index_lib.SCANN and loaded.params == index.params
  assert loaded.fingerprint == index.fingerprint
  assert list(loaded.item_ids[:2]) == ["item0", "item1"]
  np.testing.assert_array_equal(loaded.search(held_out, 10)[0], index.search(held_out, 10)[0])
  meta = json.load(open(os.path.join(moved, index_lib.INDEX_JSON)))
  assert meta["fingerprint"] == index_lib.fingerprint(index.embeddings)
  assert set(meta["files"]) >= {index_lib.EMBEDDINGS, index_lib.ITEM_IDS,
                                f"{index_lib.SEARCHER}/scann_assets.pbtxt"}


def test_load_fails_clearly_on_missing_corrupt_or_mismatched_files(scann_index, tmp_path):
  index, _ = scann_index
  base = _saved(index, tmp_path / "base")

  def copy(name):
    target = str(tmp_path / name)
    shutil.copytree(base, target)
    return target

  with pytest.raises(FileNotFoundError, match="twotower-index"):
    index_lib.load_index(str(tmp_path / "nothing"))
  d = copy("missing")
  os.remove(os.path.join(d, index_lib.SEARCHER, "hashed_dataset.npy"))
  with pytest.raises(FileNotFoundError, match="hashed_dataset.npy is missing"):
    index_lib.load_index(d)
  d = copy("corrupt")
  with open(os.path.join(d, index_lib.SEARCHER, "serialized_partitioner.pb"), "r+b") as f:
    f.seek(20)
    f.write(b"\xff\xff\xff")
  with pytest.raises(index_lib.IntegrityError, match="corrupted"):
    index_lib.load_index(d)
  # Embeddings swapped and the file hashes "fixed up": the fingerprint still catches it.
  d = copy("mismatch")
  other = index.embeddings.copy()
  other[0] *= -1
  np.save(os.path.join(d, index_lib.EMBEDDINGS), other)
  meta = json.load(open(os.path.join(d, index_lib.INDEX_JSON)))
  meta["files"][index_lib.EMBEDDINGS] = fileio.sha256_file(
      os.path.join(d, index_lib.EMBEDDINGS))
  json.dump(meta, open(os.path.join(d, index_lib.INDEX_JSON), "w"))
  with pytest.raises(index_lib.IntegrityError, match="fingerprint"):
    index_lib.load_index(d)
  d = copy("pickle")
  open(os.path.join(d, index_lib.SEARCHER, "scann_docids.pkl"), "wb").write(b"x")
  with pytest.raises(index_lib.IntegrityError, match="unexpected files"):
    index_lib.load_index(d)


def test_atomic_directory_keeps_the_old_contents_on_failure(tmp_path):
  target = str(tmp_path / "out")
  with fileio.atomic_directory(target) as tmp:
    open(os.path.join(tmp, "v"), "w").write("1")
  assert open(os.path.join(target, "v")).read() == "1"
  assert os.stat(os.path.join(target, "v")).st_mode & 0o044   # not left private
  with pytest.raises(RuntimeError):
    with fileio.atomic_directory(target) as tmp:
      open(os.path.join(tmp, "v"), "w").write("2")
      raise RuntimeError("interrupted")
  assert open(os.path.join(target, "v")).read() == "1"
  assert os.listdir(tmp_path) == ["out"]
  with fileio.atomic_directory(target) as tmp:
    open(os.path.join(tmp, "v"), "w").write("3")
  assert open(os.path.join(target, "v")).read() == "3"
  assert os.listdir(tmp_path) == ["out"]


def test_atomic_directory_recovers_from_a_killed_writer(tmp_path):
  target = str(tmp_path / "out")
  # A writer killed between moving the old directory aside and renaming the new one in.
  os.makedirs(tmp_path / ".out.old-abc")
  open(tmp_path / ".out.old-abc" / "v", "w").write("old")
  # A dead writer's temporary directory.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  os.makedirs(tmp_path / f".out.tmp-{dead}-xyz")
  fileio._recover(str(tmp_path), "out")  # pylint: disable=protected-access
  assert open(os.path.join(target, "v")).read() == "old"
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_searching_with_exclusions_groups_queries_by_how_many_they_exclude(
    scann_index, monkeypatch):
  """One user with many exclusions must not deepen every query's search: queries are
  chunked in order of their exclusions, each chunk asking for k more than its own most
  excluded (a 1M-item mining run ran out of memory before)."""
  from twotower.index import searcher as searcher_lib
  index, queries = scann_index
  q = queries[:6]
  exclude = ItemSets.from_lists([list(range(300)), [5], [], [7, 8], [], [1]])
  whole, _ = index.search(q, 10, exclude=exclude)
  asked = []
  search = index.search

  def spy(queries, k, *args, **kwargs):
    asked.append((len(queries), k))
    return search(queries, k, *args, **kwargs)

  monkeypatch.setattr(searcher_lib, "_EXCLUDING_CHUNK", 2)
  monkeypatch.setattr(index, "search", spy)
  chunked, _ = searcher_lib.Index._search_excluding(index, q, 10, exclude)
  # Users 2 and 4 exclude nothing, 1 and 5 one item; 0 (300 items) goes with 3 (two).
  assert [a for a in asked if a[0] > 1] == [(2, 10), (2, 11), (2, 310)]
  for row, banned in enumerate([range(300), [5], [], [7, 8], [], [1]]):
    assert not set(chunked[row]) & set(banned)
    assert (chunked[row] >= 0).all()
  np.testing.assert_array_equal(chunked[1:], whole[1:])


def test_the_heaviest_excluders_are_searched_exactly_and_chunks_bound_their_reorder(
    scann_index, monkeypatch):
  """A user excluding so much that the reorder would score a quarter of the corpus is
  searched exactly, and no chunk holds more reorder candidates than the budget."""
  from twotower.index import searcher as searcher_lib
  index, queries = scann_index
  q = queries[:6]
  heavy = list(range(0, index.num_items, 3))
  banned = [[1], heavy, [], [2, 3], [4], [5, 6, 7]]
  budget = 2 * index.pre_reorder_for(13)
  asked = []
  search = index.search

  def spy(queries, k, *args, **kwargs):
    asked.append((len(queries), k, kwargs.get("exact", False)))
    return search(queries, k, *args, **kwargs)

  monkeypatch.setattr(searcher_lib, "_EXCLUDING_NEIGHBORS", budget)
  monkeypatch.setattr(index, "search", spy)
  got, _ = searcher_lib.Index._search_excluding(index, q, 10, ItemSets.from_lists(banned))
  approximate = [(n, k) for n, k, exact in asked if not exact]
  assert (1, 10, True) in asked and max(k for _, k in approximate) == 13
  assert all(n * index.pre_reorder_for(k) <= budget for n, k in approximate)
  want, _ = search(q[1:2], 10, exact=True, exclude=ItemSets.from_lists([heavy]))
  np.testing.assert_array_equal(got[1], want[0])
  for row, items in enumerate(banned):
    assert not set(got[row]) & set(items) and (got[row] >= 0).all()
