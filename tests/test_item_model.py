"""The export's item encoder and Recommender.add_items, on a tiny run with a text title.

One module-scoped run trains on synthetic interactions written to files, whose item table
has a category, multi-valued tags, a free-text title and 12 items with no interactions at
all (cold items: with --text_features the item tower maps them to its OOV row), then
exports it twice: brute force and ScaNN.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from twotower import export_artifacts as export_lib
from twotower import serving
from twotower.config import Config
from twotower.data import synthetic
from twotower.errors import InputError
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job

COLD = [f"cold{i}" for i in range(12)]
WORDS = np.array(["red", "blue", "green", "gold", "sky", "sea", "oak", "ash"])


def _write_dataset(directory) -> dict:
  raw = synthetic.generate(synthetic.SyntheticConfig(
      num_users=120, num_items=160, num_interactions=3000, seed=5)).dataset
  inter = raw.interactions
  paths = {name: os.path.join(directory, name) for name in ("interactions.csv", "items.tsv")}
  with open(paths["interactions.csv"], "w") as f:
    f.write("user_id,item_id,timestamp\n")
    f.writelines(f"{u},{i},{t}\n" for u, i, t in zip(inter.user_id, inter.item_id,
                                                     inter.timestamp))
  items = raw.item_features.columns
  rng = np.random.default_rng(1)
  ids = list(items["item_id"]) + COLD
  category = list(items["category"]) + [str(items["category"][i % 7]) for i in range(len(COLD))]
  tags = list(items["tags"]) + ["" if i % 3 else str(items["tags"][i]) for i in range(len(COLD))]
  titles = [" ".join(rng.choice(WORDS, 3)).title() + f", {c}!" for c in category]
  with open(paths["items.tsv"], "w", encoding="utf-8") as f:
    f.write("item_id:token\tcategory:token\ttags:token_seq\ttitle:token_seq\n")
    f.writelines(f"{i}\t{c}\t{t}\t{title}\n" for i, c, t, title in zip(ids, category, tags,
                                                                       titles))
  return paths


def _config(paths) -> Config:
  config = tiny_config()   # its model and schedule, on these files with a text title
  config.data.dataset = None
  config.data.interactions = paths["interactions.csv"]
  config.data.item_features = paths["items.tsv"]
  config.data.text_features = ("title",)
  config.data.text_max_tokens = 6
  config.model.text_encoder = "attention"
  config.model.text_dim = 8
  config.model.text_heads = 2
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from twotower.jobs import train as train_job
  root = tmp_path_factory.mktemp("item_model")
  workdir = str(root / "workdir")
  os.makedirs(workdir)
  train_job.train(_config(_write_dataset(str(root))), workdir)
  index_job.build_index(workdir, force_brute_force=True, num_tuning_queries=50)
  bf = export_job.export(workdir, str(root / "export_bf"))
  index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=50)
  scann = export_job.export(workdir, str(root / "export_scann"))
  return {"bf": bf, "scann": scann}


@pytest.fixture(scope="module")
def bf_recommender(run):
  """For tests that must leave it unchanged."""
  return serving.Recommender.load(run["bf"], verify=False)


def _items_of(export_dir, ids) -> list:
  """The export's raw item rows (item_features.jsonl) of ``ids``."""
  with open(os.path.join(export_dir, "item_features.jsonl"), encoding="utf-8") as f:
    rows = {row["item_id"]: row for row in map(json.loads, f)}
  return [rows[i] for i in ids]


_FRESH = r"""
import json, sys
import tensorflow as tf
import scann  # noqa: F401
assert not any(m.startswith(("twotower", "tf_keras", "tensorflow_recommenders"))
               for m in sys.modules), "the item model must load without twotower"
model = tf.saved_model.load(sys.argv[1])
rows = json.load(sys.stdin)
embed = model.signatures["serving_default"]
names = sorted(embed.structured_input_signature[1])
feed = {n: tf.constant([row.get(n) or "" for row in rows]) for n in names}
print("RESULT" + json.dumps({"names": names,
                             "embedding": embed(**feed)["embedding"].numpy().tolist()}))
"""


def test_manifest_records_the_item_model(run):
  manifest = json.load(open(os.path.join(run["scann"], "manifest.json")))
  entry = manifest["item_model"]
  assert entry["path"] == "item_model" and entry["requires"] == ["tensorflow"]
  assert set(entry["inputs"]) == {"item_id", "category", "tags", "title"}
  assert "free text" in entry["inputs"]["title"] and "serving_default" in entry["signatures"]
  assert "item_model/saved_model.pb" in manifest["files"]
  assert {f["name"]: f["kind"] for f in entry["features"]}["title"] == "text"


def test_item_model_in_a_fresh_process_equals_the_index_vectors(run):
  """Warm and cold corpus items, embedded from their raw strings by a process that imports
  only tensorflow and scann, get the index's vectors (item_embeddings.npy)."""
  export_dir = run["scann"]
  ids = np.array(open(os.path.join(export_dir, "item_ids.txt")).read().split("\n")[:-1])
  vectors = np.load(os.path.join(export_dir, "item_embeddings.npy"))
  picks = [int(i) for i in np.linspace(0, len(ids) - 1, 20)]
  picks += [int(np.flatnonzero(ids == c)[0]) for c in COLD]
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_USE_LEGACY")}
  proc = subprocess.run([sys.executable, "-c", _FRESH, os.path.join(export_dir, "item_model")],
                        input=json.dumps(_items_of(export_dir, ids[picks].tolist())),
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["names"] == ["category", "item_id", "tags", "title"]
  got = np.asarray(out["embedding"], np.float32)
  np.testing.assert_allclose(got, vectors[picks], atol=1e-5)
  # The cold items differ from each other only by their features and text.
  assert len({tuple(np.round(v, 4)) for v in got[-len(COLD):]}) > 1


def test_a_cold_item_embeds_like_an_unknown_id_with_its_fields(run, bf_recommender):
  rec = bf_recommender
  cold = _items_of(run["bf"], COLD[:3])
  renamed = [dict(item, item_id=f"never-seen-{n}") for n, item in enumerate(cold)]
  np.testing.assert_allclose(rec.embed_items(renamed), rec.embed_items(cold), atol=1e-6)


@pytest.mark.parametrize("kind", ["bf", "scann"])
def test_added_items_are_retrievable_at_once(run, kind):
  rec = serving.Recommender.load(run[kind])
  assert (rec.index.searcher is not None) == (kind == "scann")
  n = rec.index.num_items
  # A new item with a cold item's fields gets that item's vector (both read the OOV row),
  # so it must come back wherever the cold item does: for the user who likes it best.
  cold = _items_of(run[kind], COLD[:1])[0]
  vector = rec.embed_items([cold])[0]
  users = [{"user_id": str(u)} for u in rec.defaults["user_id"]]
  queries = rec.embed(users)
  best = int(np.argmax(queries @ vector))
  user, query = users[best], queries[best]
  k = int(np.sum(rec.index.embeddings @ query > vector @ query)) + 4
  new = [dict(cold, item_id="new-1"),
         {"item_id": 12345, "title": "Oak Sea", "tags": ["t1", 7], "category": None}]
  assert rec.add_items(new) == {"added": ["new-1", "12345"], "replaced": []}
  assert rec.index.num_items == n + 2 and list(rec.item_ids[-2:]) == ["new-1", "12345"]
  got = dict(rec.recommend(user, k=k))
  assert "new-1" in got and COLD[0] in got, (k, got)
  assert abs(got["new-1"] - got[COLD[0]]) < 1e-5
  assert "new-1" not in dict(rec.recommend(user, k=k, exclude_items=["new-1"]))
  assert rec.describe_items(["new-1", "12345"], ["title", "tags", "category"]) == [
      {"title": cold["title"], "tags": cold["tags"], "category": cold["category"]},
      {"title": "Oak Sea", "tags": "t1 7", "category": None}]
  # An id already in the corpus is replaced: new vector, new fields, no new row.
  assert rec.add_items([{"item_id": "new-1", "title": "Ash"}]) == {
      "added": [], "replaced": ["new-1"]}
  assert rec.index.num_items == n + 2
  assert rec.describe_items(["new-1"], ["title", "category"]) == [
      {"title": "Ash", "category": None}]
  np.testing.assert_allclose(rec.index.embeddings[n],
                             rec.embed_items([{"item_id": "new-1", "title": "Ash"}])[0],
                             atol=1e-6)
  everything = rec.recommend(user, k=n + 10)
  assert len(everything) == n + 2 and len({i for i, _ in everything}) == n + 2


def test_add_items_while_requests_are_served(run):
  """Requests in 4 threads while items are added one by one to the ScaNN search: no
  request fails or sees a half-added item, and every addition is there afterwards."""
  import threading
  rec = serving.Recommender.load(run["scann"], verify=False)
  users = [{"user_id": str(u)} for u in rec.defaults["user_id"][:20]]
  stop, errors = threading.Event(), []

  def client(t):
    while not stop.is_set():
      try:
        for recs in rec.recommend_batch(users[t::4], k=rec.index.num_items):
          assert len({i for i, _ in recs}) == len(recs)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(repr(e))
        return

  threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
  for thread in threads:
    thread.start()
  try:
    for i in range(60):
      rec.add_items([{"item_id": f"live-{i}", "title": f"Sea Oak {i}"}])
  finally:
    stop.set()
    for thread in threads:
      thread.join()
  assert not errors, errors[:3]
  assert set(rec.item_ids[-60:]) == {f"live-{i}" for i in range(60)}


@pytest.mark.parametrize("bad, match", [
    ({"item_id": "x"}, "list of item dicts"),
    (["x"], r"items\[0\] must be a dict"),
    ([{"title": "no id"}], r"items\[0\]: item_id is required"),
    ([{"item_id": "a"}, {"item_id": ""}], r"items\[1\]: item_id is required"),
    ([{"item_id": "a", "colour": "red"}], r"unknown item field\(s\) \['colour'\]"),
    ([{"item_id": "a", "title": 1.5}], r"items\[0\]\.title must be a string"),
    ([{"item_id": "a", "tags": {"t": 1}}], r"items\[0\]\.tags must be a list of tokens"),
    ([{"item_id": "a"}, {"item_id": "a"}], "given twice")])
def test_bad_items_are_input_errors_naming_the_field(bf_recommender, bad, match):
  rec = bf_recommender
  n = rec.index.num_items
  with pytest.raises(InputError, match=match):
    rec.add_items(bad)
  assert rec.index.num_items == n


def test_live_recommender_passes_add_items_through(run):
  live = serving.LiveRecommender.load(run["bf"], verify=False)
  assert live.add_items([{"item_id": "live-1", "title": "Gold Sky"}])["added"] == ["live-1"]
  assert "live-1" in set(live.current.item_ids)
  live.reload(run["bf"])   # a reload starts from the export on disk, which is unchanged
  assert "live-1" not in set(live.current.item_ids)


def test_signature_input_names_are_keyword_arguments():
  from types import SimpleNamespace
  specs = [SimpleNamespace(name=n) for n in ("title", "class", "release year", "item_id",
                                             "9lives", "class_")]
  assert export_lib.input_names(specs, export_lib.ITEM_INPUTS) == {
      "title": "title", "class": "class_", "release year": "release_year",
      "item_id": "item_id_", "9lives": "f_9lives", "class_": "class__"}
