"""Readable recommendations: the export keeps the item table's raw strings, and
recommend(with_features=...), user_history, twotower-recommend --show/--explain and the
pipeline's sample show them.

One tiny pipeline run (no ranking head) trains on synthetic interactions written to files
with a MovieLens-like item table (``movie_title``, ``release_year``, ``class``); a few
interacted items have no row in that table. Expected values are read back from the files
the run was trained on, not from the export.
"""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from twotower import export_artifacts as export_lib
from twotower import fileio, serving
from twotower import index as index_lib
from twotower.data import synthetic

COLUMNS = ["movie_title", "release_year", "class"]
GENRES = np.array(["Action", "Comedy", "Drama", "Film-Noir", "Children's", "Sci-Fi"])


def _write_dataset(directory):
  cfg = tiny_config().data
  raw = synthetic.generate(synthetic.SyntheticConfig(
      num_users=cfg.synthetic_users, num_items=cfg.synthetic_items,
      num_interactions=cfg.synthetic_interactions, seed=5)).dataset
  inter = raw.interactions
  paths = {"interactions": os.path.join(directory, "interactions.csv"),
           "items": os.path.join(directory, "items.tsv")}
  with open(paths["interactions"], "w", encoding="utf-8") as f:
    f.write("user_id,item_id,timestamp\n")
    for u, i, t in zip(inter.user_id, inter.item_id, inter.timestamp):
      f.write(f"{u},{i},{t}\n")
  rng = np.random.default_rng(0)
  items = sorted(set(inter.item_id))
  with open(paths["items"], "w", encoding="utf-8") as f:
    f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
    for n, item in enumerate(items[5:]):   # the first five items have no row
      genres = " ".join(rng.choice(GENRES, rng.integers(1, 4), replace=False))
      title = "Amélie (2001)" if n == 0 else f"Picture {n} of {item}"
      f.write(f"{item}\t{title}\t{1930 + n % 70}\t{genres}\n")
  return paths


def _item_file_rows(path):
  """item_id -> {column: raw string} read straight from the item file."""
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = [h.split(":")[0] for h in next(reader)]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in reader}


@pytest.fixture(scope="module")
def readable(tmp_path_factory):
  from twotower.pipeline import run_pipeline
  root = tmp_path_factory.mktemp("readable")
  paths = _write_dataset(str(root))
  config = tiny_config()
  config.data.dataset = None
  config.data.interactions = paths["interactions"]
  config.data.item_features = paths["items"]
  summary = run_pipeline(config, str(root / "workdir"), rank=False)
  return {"summary": summary, "export_dir": summary["export_dir"], "paths": paths,
          "items": _item_file_rows(paths["items"]),
          "rec": serving.Recommender.load(summary["export_dir"])}


def _expected_features(readable, item_id, columns=COLUMNS):
  row = readable["items"].get(item_id)
  return {c: (row[c] if row else None) for c in columns}


def _known_user(rec):
  return str(rec.defaults["user_id"][len(rec.defaults["user_id"]) // 2])


def test_export_lists_the_item_table_in_corpus_order_with_its_hash(readable):
  d = readable["export_dir"]
  manifest = fileio.read_json(os.path.join(d, export_lib.MANIFEST))
  assert manifest["item_features"] == {"path": export_lib.ITEM_FEATURES, "columns": COLUMNS}
  with open(os.path.join(d, export_lib.ITEM_FEATURES), "rb") as f:
    data = f.read()
  assert manifest["files"][export_lib.ITEM_FEATURES]["sha256"] == hashlib.sha256(
      data).hexdigest()
  rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
  ids = index_lib.load_item_ids(os.path.join(d, index_lib.ITEM_IDS))
  assert [r["item_id"] for r in rows] == list(ids)
  for r in rows:
    assert {c: r[c] for c in COLUMNS} == _expected_features(readable, r["item_id"])
  assert sum(r["movie_title"] is None for r in rows) == 5


def test_with_features_returns_each_items_row_of_the_item_file(readable):
  rec = readable["rec"]
  user = {"user_id": _known_user(rec)}
  plain = rec.recommend(user, k=20)
  full = rec.recommend(user, k=20, with_features=True)
  assert [(r["item_id"], r["score"]) for r in full] == plain
  for r in full:
    assert r["features"] == _expected_features(readable, r["item_id"])
  # The aliases find MovieLens' column names; the real names work too, in the order asked.
  named = rec.recommend(user, k=20, with_features=["genres", "title"])
  assert [list(r["features"]) for r in named] == [["class", "movie_title"]] * 20
  assert named == rec.recommend(user, k=20, with_features=["class", "movie_title"])
  assert rec.title_column == "movie_title"
  batch = rec.recommend_batch([user, user], k=20, with_features="title")
  assert [[r["features"]["movie_title"] for r in recs] for recs in batch] == [
      [_expected_features(readable, r["item_id"])["movie_title"] for r in full]] * 2


def test_unknown_item_column_is_an_error_listing_the_available_ones(readable,
                                                                    tiny_scann_export):
  rec = readable["rec"]
  with pytest.raises(ValueError, match=r"'colour'.*movie_title, release_year, class"
                                       r".*title -> movie_title"):
    rec.recommend({"user_id": _known_user(rec)}, with_features=["title", "colour"])
  with pytest.raises(ValueError, match="'colour'"):
    rec.user_history(_known_user(rec), with_features=["colour"])
  synthetic_rec = serving.Recommender.load(tiny_scann_export)   # no title column
  assert synthetic_rec.title_column is None
  with pytest.raises(ValueError, match=r"'title'.*category, tags, price_bucket"):
    synthetic_rec.recommend({}, with_features=["title"])


def test_user_history_is_the_users_latest_items_newest_first(readable):
  rec = readable["rec"]
  user = _known_user(rec)
  with open(readable["paths"]["interactions"], encoding="utf-8") as f:
    rows = [line.rstrip("\n").split(",") for line in f][1:]
  mine = [(int(t), n, i) for n, (u, i, t) in enumerate(rows) if u == user]
  expected = [i for _, _, i in sorted(mine)][-rec.history_length:][::-1]
  assert rec.user_history(user) == expected
  assert rec.user_history({"user_id": user}, with_features="title") == [
      {"item_id": i, "features": {"movie_title": _expected_features(readable, i)[
          "movie_title"]}} for i in expected]
  # A request's own history (oldest first, as everywhere) is what the query reads.
  assert rec.user_history({"user_id": user, "history": expected[:2]}) == expected[:2][::-1]
  assert rec.user_history("no-such-user") == []
  assert rec.is_known_user(user) and not rec.is_known_user("no-such-user")


def _recommend_cli(export_dir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "twotower.cli.recommend", f"--export_dir={export_dir}", *flags],
      capture_output=True, text=True, timeout=300)


def test_recommend_cli_show_and_explain(readable):
  rec = readable["rec"]
  user = _known_user(rec)
  proc = _recommend_cli(readable["export_dir"], f"--user_id={user}", "--k=4",
                        "--show=title,genres", "--explain")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)   # the whole of stdout is one JSON document
  recs = rec.recommend({"user_id": user}, k=4)
  assert [r["item_id"] for r in out["recommendations"]] == [i for i, _ in recs]
  assert [r["score"] for r in out["recommendations"]] == pytest.approx([s for _, s in recs])
  for r in out["recommendations"]:
    assert r["features"] == _expected_features(readable, r["item_id"], ["movie_title", "class"])
  assert out["known_user"] is True
  row = list(rec.defaults["user_id"]).index(user)
  stored = [i for i in rec.defaults["history"][row] if i]   # oldest first
  assert [h["item_id"] for h in out["history"]] == stored[::-1]
  assert out["history"] == rec.user_history(user, with_features=["movie_title", "class"])
  assert len(out["history"]) == rec.history_length
  # --explain alone shows the titles; --show alone adds no history.
  proc = _recommend_cli(readable["export_dir"], f"--user_id={user}", "--k=2", "--explain")
  out = json.loads(proc.stdout)
  assert [list(h["features"]) for h in out["history"]] == [["movie_title"]] * len(
      out["history"])
  proc = _recommend_cli(readable["export_dir"], f"--user_id={user}", "--k=2",
                        "--show=release_year")
  out = json.loads(proc.stdout)
  assert "history" not in out and [list(r["features"]) for r in out["recommendations"]] == [
      ["release_year"]] * 2


def test_recommend_cli_names_the_unknown_show_column(readable):
  proc = _recommend_cli(readable["export_dir"], "--user_id=1", "--show=title,colour")
  assert proc.returncode == 2 and proc.stdout == ""
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith("twotower-recommend: error: --show: unknown item feature column "
                          "'colour'")
  assert "movie_title, release_year, class" in error
  assert "Traceback" not in proc.stderr


def test_pipeline_sample_shows_titles(readable):
  sample = readable["summary"]["sample"]
  recs = readable["rec"].recommend({"user_id": sample["user_id"]}, k=10)
  assert [(r["item_id"], r["score"]) for r in sample["recommendations"]] == recs
  assert [r["features"] for r in sample["recommendations"]] == [
      {"movie_title": _expected_features(readable, i)["movie_title"]} for i, _ in recs]
  assert any(r["features"]["movie_title"] for r in sample["recommendations"])


def test_sample_without_a_title_column_is_ids_only(tiny_scann_export):
  from twotower.pipeline import sample_recommendations
  rec = serving.Recommender.load(tiny_scann_export)
  user = str(rec.defaults["user_id"][0])
  sample = sample_recommendations(rec, user)
  assert [(r["item_id"], r["score"]) for r in sample["recommendations"]] == rec.recommend(
      {"user_id": user}, k=10)
  assert all(set(r) == {"item_id", "score"} for r in sample["recommendations"])


def test_item_table_must_match_the_index(readable, tmp_path):
  d = str(tmp_path / "export")
  shutil.copytree(readable["export_dir"], d)
  path = os.path.join(d, export_lib.ITEM_FEATURES)
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(lines[1:] + lines[:1])   # another order than the index's
  with pytest.raises(serving.IntegrityError, match="corpus order"):
    serving.Recommender.load(d, verify=False)
  with open(path, "w", encoding="utf-8") as f:
    f.write("{not json\n")
  with pytest.raises(serving.IntegrityError, match="item feature table is unreadable"):
    serving.Recommender.load(d, verify=False)


def test_an_item_column_named_like_a_keyword_embeds_and_adds(readable):
  """MovieLens' ``class`` cannot be a signature's keyword argument: the item model's input
  is ``class_`` (the manifest says so), and Recommender maps it."""
  d = readable["export_dir"]
  manifest = fileio.read_json(os.path.join(d, export_lib.MANIFEST))
  assert {f["name"]: f["input"] for f in manifest["item_model"]["features"]} == {
      "movie_title": "movie_title", "release_year": "release_year", "class": "class_"}
  assert "class_" in manifest["item_model"]["inputs"]
  rec = serving.Recommender.load(d, verify=False)
  ids = list(rec.item_ids[:5])
  rows = [{"item_id": i, **{c: v for c, v in _expected_features(readable, i).items()
                            if v is not None}} for i in ids]
  np.testing.assert_allclose(rec.embed_items(rows), rec.index.embeddings[:5], atol=1e-5)
  rec.add_items([{"item_id": "brand-new", "movie_title": "Heat (2026)", "class": "Action"}])
  assert rec.describe_items(["brand-new"]) == [
      {"movie_title": "Heat (2026)", "release_year": None, "class": "Action"}]
