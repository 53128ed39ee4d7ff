"""Index -> export -> serving on a small trained workdir.

One session-scoped run trains on synthetic data written to files with a multi-valued user
feature and 3 OOV buckets (so that in-graph tokenisation and hashed OOV lookup are
exercised), then builds a brute-force export and a ScaNN export from it.
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from twotower import export_artifacts as export_lib
from twotower import fileio, serving
from twotower import index as index_lib
from twotower.config import Config
from twotower.data import features as features_lib
from twotower.data import synthetic
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job

K = 10


def _write_tsv(path, header, columns):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for row in zip(*columns):
      f.write("\t".join(row) + "\n")


def _write_dataset(directory):
  raw = synthetic.generate(synthetic.SyntheticConfig(
      num_users=400, num_items=900, num_interactions=16_000, seed=3)).dataset
  inter = raw.interactions
  paths = {name: os.path.join(directory, name)
           for name in ("interactions.csv", "users.tsv", "items.tsv")}
  with open(paths["interactions.csv"], "w") as f:
    f.write("user_id,item_id,timestamp\n")
    for u, i, t in zip(inter.user_id, inter.item_id, inter.timestamp):
      f.write(f"{u},{i},{t}\n")
  users = raw.user_features.columns
  rng = np.random.default_rng(0)
  words = np.array(["jazz", "rock", "film", "chess", "golf", "tea"])
  seps = np.array([" ", "|", " | ", "  "])
  interests = []
  for n in rng.integers(0, 5, len(users["user_id"])):   # up to 4 tokens (> max_tokens)
    tokens = rng.choice(words, n, replace=False)
    text = "".join(t + str(rng.choice(seps)) for t in tokens).strip(" |")
    interests.append(text)
  keep = rng.random(len(users["user_id"])) > 0.1   # some users have no feature row
  _write_tsv(paths["users.tsv"],
             ["user_id:token", "segment:token", "region:token", "interests:token_seq"],
             [np.asarray(users[c])[keep] for c in ("user_id", "segment", "region")]
             + [np.asarray(interests, dtype=object)[keep]])
  items = raw.item_features.columns
  _write_tsv(paths["items.tsv"],
             ["item_id:token", "category:token", "tags:token_seq", "price_bucket:token"],
             [items[c] for c in ("item_id", "category", "tags", "price_bucket")])
  return paths


def _config(paths) -> Config:
  config = Config()
  config.data.dataset = None
  config.data.interactions = paths["interactions.csv"]
  config.data.user_features = paths["users.tsv"]
  config.data.item_features = paths["items.tsv"]
  config.data.num_oov_buckets = 3
  config.data.history_length = 8
  config.data.max_tokens = 3
  config.model.embedding_dim = 32
  config.model.id_embedding_dim = 32
  config.model.user_layers = (64,)
  config.model.item_layers = (64,)
  config.train.batch_size = 256
  config.train.epochs = 2
  config.train.progress = False
  config.train.eval_ks = (10, 20)
  config.loss.queue_size = 0
  return config


@pytest.fixture(scope="session")
def run(tmp_path_factory):
  """(workdir, brute-force export dir, ScaNN export dir)."""
  from twotower.jobs import train as train_job
  root = tmp_path_factory.mktemp("serving")
  workdir = str(root / "workdir")
  os.makedirs(workdir)
  train_job.train(_config(_write_dataset(str(root))), workdir)
  bf_report = index_job.build_index(workdir, force_brute_force=True, num_tuning_queries=100)
  bf_dir = export_job.export(workdir, str(root / "export_bf"))
  scann_report = index_job.build_index(workdir, brute_force_below=0, num_tuning_queries=150)
  scann_dir = export_job.export(workdir, str(root / "export_scann"))
  return {"workdir": workdir, "bf": bf_dir, "scann": scann_dir, "root": root,
          "bf_report": bf_report, "scann_report": scann_report}


@pytest.fixture(scope="session")
def recommenders(run):
  return {kind: serving.Recommender.load(run[kind]) for kind in ("bf", "scann")}


@pytest.fixture(scope="session")
def trained(run):
  from twotower.workdir import load_trained
  return load_trained(run["workdir"])


def _known_users(rec, n=40):
  ids = rec.defaults["user_id"]  # pylint: disable=protected-access
  return [{"user_id": str(u)} for u in ids[np.linspace(0, len(ids) - 1, n).astype(int)]]


# ----------------------------------------------------------------------------- index


def test_build_index_writes_the_index_and_merges_metrics(run):
  report = run["scann_report"]
  assert report["kind"] == "scann" and report["recall@10"] >= 0.85
  for key in ("recall@100", "qps_single", "qps_batched", "build_seconds", "index_bytes",
              "float32_bytes", "brute_force_qps_single"):
    assert key in report, key
  assert run["bf_report"]["kind"] == "brute_force" and run["bf_report"]["recall@10"] == 1.0
  metrics = fileio.read_json(os.path.join(run["workdir"], "metrics.json"))
  assert metrics["index"]["fingerprint"] == report["fingerprint"]
  assert "epochs" in metrics and "final" in metrics   # training's entries kept
  index_dir = os.path.join(run["workdir"], "index")
  assert sorted(os.listdir(index_dir)) == ["index.json", "item_embeddings.npy",
                                           "item_ids.txt", "searcher"]
  assert index_lib.load_index(index_dir).fingerprint == report["fingerprint"]


# ----------------------------------------------------------------------------- export


def test_export_layout_and_manifest(run):
  for kind in ("bf", "scann"):
    d = run[kind]
    manifest = fileio.read_json(os.path.join(d, "manifest.json"))
    assert set(manifest["versions"]) >= {"tensorflow", "scann", "numpy", "python"}
    assert manifest["config"]["data"]["history_length"] == 8
    on_disk = fileio.file_hashes(d)
    on_disk.pop("manifest.json")
    assert on_disk == {rel: e["sha256"] for rel, e in manifest["files"].items()}
    assert "query_model/saved_model.pb" in on_disk
    assert "user_defaults.npz" in on_disk and "item_embeddings.npy" in on_disk
    has_searcher = any(rel.startswith("index/") for rel in on_disk)
    assert has_searcher == (kind == "scann")
    with np.load(os.path.join(d, "user_defaults.npz"), allow_pickle=False) as npz:
      assert npz["history"].dtype.kind == "U" and npz["history"].shape[1] == 8
  assert not [p for p in os.listdir(run["root"]) if p.startswith(".")]   # no temporaries


def test_export_requires_an_index(run, tmp_path):
  workdir = str(tmp_path / "noindex")
  shutil.copytree(run["workdir"], workdir, ignore=shutil.ignore_patterns("index", "export*"))
  with pytest.raises(FileNotFoundError, match="twotower-index"):
    export_job.export(workdir)


def test_interrupted_re_export_leaves_the_old_export(run, tmp_path, monkeypatch):
  target = str(tmp_path / "export")
  shutil.copytree(run["bf"], target)
  before = fileio.file_hashes(target)

  def boom(*args, **kwargs):
    raise KeyboardInterrupt("killed mid-export")

  monkeypatch.setattr(export_job, "_save_query_model", boom)
  with pytest.raises(KeyboardInterrupt):
    export_job.export(run["workdir"], target)
  assert fileio.file_hashes(target) == before
  assert os.listdir(tmp_path) == ["export"]
  serving.Recommender.load(target)


def test_in_graph_lookup_and_tokenizer_match_training(trained):
  import tensorflow as tf
  data = trained.data
  vocab = data.user_vocab
  assert vocab.num_oov_buckets == 3
  strings = np.array(list(vocab.tokens[:5]) + ["", "never-seen", "x1", "zz", "u-unknown"],
                     dtype=object)
  table = export_lib.lookup_table(vocab)
  got = export_lib.lookup_ids(table, 3, tf.constant(strings.astype(str)))
  np.testing.assert_array_equal(got.numpy(), vocab.lookup(strings))
  texts = np.array(["jazz", "", "  rock|film  chess", "|tea", "a||b | c d", "x  "], dtype=object)
  expected = features_lib.tokenize(texts, 3)
  got = features_lib.tokenize_tf(tf.constant(texts.astype(str)), 3).numpy().astype(str)
  np.testing.assert_array_equal(got, expected.astype(str))
  ids = tf.constant([[0, 5, 0, 6, 7], [0, 0, 0, 0, 0], [1, 2, 3, 4, 9]], tf.int32)
  np.testing.assert_array_equal(export_lib.right_align(ids, 3).numpy(),
                                [[5, 6, 7], [0, 0, 0], [3, 4, 9]])


def test_query_model_embeds_raw_strings_like_the_user_tower(recommenders, trained):
  """Unknown ids, OOV feature values, a truncated multi-valued feature and unknown history
  items, through the SavedModel vs the trained tower fed the vocabularies' ids."""
  import tensorflow as tf
  rec, data = recommenders["bf"], trained.data
  items = list(data.item_vocab.tokens[:12])
  users = [
      {"user_id": str(data.user_vocab.tokens[0]), "history": items[:3] + ["nope"],
       "segment": "s-unknown", "region": str(data.user_features.specs[1].vocab.tokens[0]),
       "interests": "jazz|rock film chess"},
      {"user_id": "stranger", "history": items, "segment": "", "region": "",
       "interests": ""},
  ]
  got = rec.embed(users)
  specs = {s.name: s for s in data.user_features.specs}
  feats = {"user_id": data.user_vocab.lookup(np.array([u["user_id"] for u in users],
                                                      dtype=object))}
  hist = np.zeros((2, 8), np.int32)
  hist[0, -3:] = data.item_vocab.lookup(np.array(items[:3], dtype=object))
  hist[1, :] = data.item_vocab.lookup(np.array(items[-8:], dtype=object))
  feats["history"] = hist
  for name, spec in specs.items():
    raw = np.array([u[name] for u in users], dtype=object)
    feats[name] = spec.vocab.lookup(features_lib.raw_feature_matrix(raw, spec))
  expected = trained.model.user_tower({k: tf.constant(v) for k, v in feats.items()},
                                      training=False).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-5)


# ----------------------------------------------------------------------------- fresh process

_FRESH = r"""
import json, sys
import tensorflow as tf
import scann  # registers the Scann>* ops; nothing from twotower
assert not any(m.startswith(("twotower", "tf_keras", "tensorflow_recommenders"))
               for m in sys.modules), "the SavedModel must load without twotower"
model = tf.saved_model.load(sys.argv[1])
inputs = json.load(sys.stdin)
feed = {k: tf.constant(v) for k, v in inputs.items()}
feed["k"] = tf.constant(%d)
out = {}
for name in ("serving_default", "brute_force"):
  res = model.signatures[name](**feed)
  out[name] = [[i.decode() for i in row] for row in res["item_ids"].numpy()]
  out[name + "_widths"] = [int(model.signatures[name](**dict(feed, k=tf.constant(k)))[
      "item_ids"].shape[1]) for k in (0, 10 ** 6)]
print("RESULT" + json.dumps(out))
""" % K


def _signature_inputs(rec, users):
  normalized = [rec.normalize(u) for u in users]
  inputs = rec._inputs(normalized)  # pylint: disable=protected-access
  return {k: v.numpy().astype(str).tolist() for k, v in inputs.items()}


@pytest.mark.parametrize("kind", ["bf", "scann"])
def test_saved_model_answers_in_a_fresh_process_like_the_python_function(
    run, recommenders, kind):
  rec = recommenders[kind]
  users = _known_users(rec) + [{"user_id": "stranger", "history": ["nope"]}]
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_USE_LEGACY")}
  proc = subprocess.run([sys.executable, "-c", _FRESH,
                         os.path.join(run[kind], "query_model")],
                        input=json.dumps(_signature_inputs(rec, users)), env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  python = [[i for i, _ in r] for r in rec.recommend_batch(users, k=K)]
  exact = [[i for i, _ in r] for r in serving.Recommender.recommend_batch(
      recommenders["bf"], users, k=K)]
  assert out["brute_force"] == exact
  n = rec.index.num_items
  assert out["brute_force_widths"] == out["serving_default_widths"] == [0, n]
  if kind == "bf":
    assert out["serving_default"] == python == exact
  else:
    overlap = np.mean([len(set(a) & set(b)) / K
                       for a, b in zip(out["serving_default"], python)])
    assert overlap >= 0.9, overlap


# ----------------------------------------------------------------------------- serving


@pytest.mark.parametrize("kind", ["bf", "scann"])
def test_exclusions_are_applied_before_the_cut(recommenders, kind):
  rec = recommenders[kind]
  for user in _known_users(rec, 10):
    top = rec.recommend(user, k=30)
    exclude = [i for i, _ in top[:15]] + ["not-an-item"]
    got = rec.recommend(user, k=K, exclude_items=exclude)
    assert len(got) == K
    assert not set(i for i, _ in got) & set(exclude)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    if kind == "bf":
      assert [i for i, _ in got] == [i for i, _ in top[15:25]]


@pytest.mark.parametrize("kind", ["bf", "scann"])
def test_k_larger_than_the_corpus(recommenders, kind):
  rec = recommenders[kind]
  n = rec.index.num_items
  user = _known_users(rec, 1)[0]
  everything = rec.recommend(user, k=n + 50)
  assert len(everything) == n and len({i for i, _ in everything}) == n
  excluded = [i for i, _ in everything[:7]]
  rest = rec.recommend(user, k=n + 50, exclude_items=excluded)
  assert len(rest) == n - 7 and not set(excluded) & {i for i, _ in rest}
  assert rec.recommend(user, k=0) == []


def test_known_user_defaults_and_history_truncation(recommenders):
  rec = recommenders["bf"]
  defaults = rec.defaults
  row = int(np.flatnonzero((defaults["history"] != "").all(axis=1))[0])
  user_id = str(defaults["user_id"][row])
  history = [h for h in defaults["history"][row] if h]
  by_id = rec.recommend({"user_id": user_id})
  assert by_id == rec.recommend({"user_id": user_id, "history": history})
  assert by_id != rec.recommend({"user_id": user_id, "history": []})
  huge = ["nope"] * 5000 + list(rec.item_ids[:3000]) + history
  assert rec.recommend({"user_id": user_id, "history": huge}) == by_id
  assert rec.recommend({"user_id": int(user_id[1:])} if user_id[1:].isdigit() else
                       {"user_id": user_id}) is not None


def test_unknown_users_and_values_are_oov_not_errors(recommenders):
  rec = recommenders["scann"]
  for user in ({}, {"user_id": "stranger"}, {"user_id": "stranger", "history": ["x", "y"]},
               {"user_id": "", "segment": "weird", "region": "r-none",
                "interests": ["jazz", "unheard-of"]},
               {"user_id": 12345, "history": [1, 2, 3]}, {"user_id": None, "history": None}):
    got = rec.recommend(user, k=K)
    assert len(got) == K, user


@pytest.mark.parametrize("bad, match", [
    ("u1", "dict"), (["u1"], "dict"), ({"user_id": 1.5}, "user_id"),
    ({"user_id": "u1", "history": "i1 i2"}, "history"), ({"user_id": "u1", "age": "3"},
                                                         "unknown user field"),
    ({"user_id": "u1", "history": [None]}, "history item"),
    ({"user_id": "u1", "segment": ["a", "b"]}, "segment")])
def test_bad_requests_raise_value_errors(recommenders, bad, match):
  with pytest.raises(ValueError, match=match):
    recommenders["bf"].recommend(bad)


def test_bad_arguments_raise_value_errors(recommenders):
  rec = recommenders["bf"]
  with pytest.raises(ValueError, match="k must"):
    rec.recommend({"user_id": "u1"}, k=-1)
  with pytest.raises(ValueError, match="exclude_items"):
    rec.recommend({"user_id": "u1"}, exclude_items="i1")
  with pytest.raises(ValueError, match="one iterable"):
    rec.recommend_batch([{}, {}], exclude_items=[["i1"]])
  with pytest.raises(ValueError, match="list of user dicts"):
    rec.recommend_batch({"user_id": "u1"})


def test_batch_matches_single_and_threads_match_sequential(recommenders):
  users = _known_users(recommenders["bf"], 24)
  excludes = [list(recommenders["bf"].item_ids[i:i + 3]) for i in range(len(users))]
  ids = lambda results: [[i for i, _ in r] for r in results]
  for kind in ("bf", "scann"):
    rec = recommenders[kind]
    single = ids(rec.recommend(u, k=K, exclude_items=e) for u, e in zip(users, excludes))
    batch = ids(rec.recommend_batch(users, k=K, exclude_items=excludes))
    assert all(len(r) == K and not set(r) & set(e) for r, e in zip(batch, excludes))
    if kind == "bf":   # exact search: the batch is the single requests, row for row
      assert batch == single
    else:
      # A query embedded alone and in a batch can differ in the last bit (a one-row product
      # sums in another order), and ScaNN's quantized first pass may then keep another
      # candidate near its cut; the results agree but for such a swap.
      same = [len(set(b) & set(s)) / K for b, s in zip(batch, single)]
      assert np.mean(same) >= 0.95 and sum(b == s for b, s in zip(batch, single)) >= 20
  rec = recommenders["scann"]
  single = [rec.recommend(u, k=K, exclude_items=e) for u, e in zip(users, excludes)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda a: rec.recommend(a[0], k=K, exclude_items=a[1]),
                             zip(users * 4, excludes * 4)))
  assert [[i for i, _ in r] for r in threaded] == [[i for i, _ in r] for r in single * 4]


def test_reranker_hook_reorders_the_top_candidates(run):
  calls = []

  def reverse(users, candidates):
    calls.append((users, candidates))
    return [list(range(len(c))) for c in candidates]   # last retrieved first

  rec = serving.Recommender.load(run["bf"], reranker=reverse, rerank_candidates=25)
  plain = serving.Recommender.load(run["bf"])
  user = _known_users(plain, 1)[0]
  retrieved = [i for i, _ in plain.recommend(user, k=25, exclude_items=["x"])]
  calls.clear()
  got = rec.recommend(user, k=5, exclude_items=["x"])
  assert [i for i, _ in got] == retrieved[::-1][:5]
  assert [s for _, s in got] == [24.0, 23.0, 22.0, 21.0, 20.0]
  (users, candidates), = calls
  assert users[0]["user_id"] == user["user_id"] and "history" in users[0]
  assert candidates == [retrieved]


# ----------------------------------------------------------------------------- load errors


def test_load_fails_clearly(run, tmp_path):
  def copy(name):
    target = str(tmp_path / name)
    shutil.copytree(run["scann"], target)
    return target

  with pytest.raises(FileNotFoundError, match="twotower-export"):
    serving.Recommender.load(str(tmp_path / "nothing"))
  d = copy("missing")
  os.remove(os.path.join(d, "item_ids.txt"))
  with pytest.raises(FileNotFoundError, match="item_ids.txt is missing"):
    serving.Recommender.load(d)
  d = copy("nomanifest")
  os.remove(os.path.join(d, "manifest.json"))
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    serving.Recommender.load(d)
  d = copy("corrupt")
  with open(os.path.join(d, "index", "hashed_dataset.npy"), "r+b") as f:
    f.seek(-8, os.SEEK_END)
    f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
  with pytest.raises(serving.IntegrityError, match="corrupted"):
    serving.Recommender.load(d)
  d = copy("fingerprint")
  path = os.path.join(d, "manifest.json")
  manifest = fileio.read_json(path)
  manifest["index"]["fingerprint"] = "0" * 64
  fileio.atomic_write_json(path, manifest)
  with pytest.raises(serving.IntegrityError, match="fingerprint"):
    serving.Recommender.load(d)
  d = copy("garbled")
  open(os.path.join(d, "manifest.json"), "w").write("{not json")
  with pytest.raises(serving.IntegrityError, match="corrupted"):
    serving.Recommender.load(d)


def test_recommend_cli_prints_json(run):
  rec = serving.Recommender.load(run["bf"])
  user = _known_users(rec, 1)[0]["user_id"]
  exclude = rec.recommend({"user_id": user}, k=2)[0][0]
  proc = subprocess.run(
      [sys.executable, "-m", "twotower.cli.recommend", f"--export_dir={run['bf']}",
       f"--user_id={user}", "--k=4", f"--exclude={exclude}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out["user_id"] == user and len(out["recommendations"]) == 4
  expected = rec.recommend({"user_id": user}, k=4, exclude_items=[exclude])
  assert [r["item_id"] for r in out["recommendations"]] == [i for i, _ in expected]
