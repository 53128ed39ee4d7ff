"""Text features: the tokenizer, the declaration errors, the encoders and the cold-item row."""
import numpy as np
import pytest
import tensorflow as tf

from twotower.config import Config, ModelConfig
from twotower.data import prepare, readers, text, types
from twotower.data.vocab import FIRST_OOV, PAD
from twotower.model.text_encoder import TextEncoder
from twotower.model.towers import ItemTower


def test_tokenizer_lowercases_splits_on_non_word_characters_and_truncates():
  values = np.array(["Toy Story (1995)", "L'Été—Déjà vu", "", "a_b c-d e f g h"], object)
  tokens = text.tokenize(values, 4)
  assert tokens.tolist() == [["toy", "story", "1995", ""],
                             ["l", "été", "déjà", "vu"],
                             ["", "", "", ""],
                             ["a_b", "c", "d", "e"]]   # over-long: the first 4 kept
  # The in-graph twin (what the exports run) gives the same tokens.
  graph = text.tokenize_tf(tf.constant(values.astype(str)), 4).numpy()
  assert [[t.decode() for t in row] for row in graph] == tokens.tolist()


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _files(tmp_path, title_rows):
  inter = _write(tmp_path / "inter.csv",
                 ["user_id,item_id,timestamp"]
                 + [f"u{u},i{(u + t) % 6},{t}" for u in range(6) for t in range(6)])
  items = _write(tmp_path / "items.csv", ["item_id,title,genre"] + title_rows)
  return inter, items


def _prepare(inter, items, names, max_tokens=32):
  config = Config()
  config.data.interactions, config.data.item_features = inter, items
  config.data.dataset = None
  config.data.text_features = tuple(names)
  config.data.text_max_tokens = max_tokens
  return prepare.prepare(prepare.load_raw(config.data), config.data)


def test_text_column_becomes_a_text_feature_with_long_titles_truncated(tmp_path):
  long_title = " ".join(f"w{i}" for i in range(50))
  rows = [f"i{i},{long_title if i == 0 else f'Title {i}'},g{i % 2}" for i in range(6)]
  data = _prepare(*_files(tmp_path, rows), ["title"], max_tokens=5)
  spec = {s.name: s for s in data.item_features.specs}["title"]
  assert spec.kind == types.TEXT and spec.max_tokens == 5
  row = data.item_vocab.lookup(np.array(["i0"], object))[0]
  assert spec.vocab.token(data.item_features.values["title"][row]).tolist() == [
      "w0", "w1", "w2", "w3", "w4"]
  # Undeclared columns keep their kind.
  assert {s.name: s for s in data.item_features.specs}["genre"].kind == types.TOKEN


def test_a_missing_text_column_names_the_files_and_the_column(tmp_path):
  inter, items = _files(tmp_path, [f"i{i},T {i},g" for i in range(6)])
  with pytest.raises(types.DataError) as raised:
    _prepare(inter, items, ["description"])
  message = str(raised.value)
  assert "'description'" in message and items in message


def test_a_text_column_empty_in_every_row_names_the_file_and_the_column(tmp_path):
  inter, items = _files(tmp_path, [f"i{i},,g" for i in range(6)])
  with pytest.raises(types.DataError) as raised:
    _prepare(inter, items, ["title"])
  message = str(raised.value)
  assert items in message and "'title'" in message and "empty" in message


def test_without_feature_tables_a_text_column_is_an_error(tmp_path):
  inter, _ = _files(tmp_path, [])
  config = Config()
  config.data.interactions, config.data.dataset = inter, None
  config.data.text_features = ("title",)
  raw = readers.read_dataset_files(inter)
  with pytest.raises(types.DataError, match="--item_features"):
    prepare.prepare(raw, config.data)


@pytest.mark.parametrize("kind", ["mean", "cnn", "attention"])
def test_encoders_ignore_padding_and_encode_an_empty_text_as_zeros(kind):
  config = ModelConfig(text_encoder=kind, text_dim=8, text_heads=2, text_layers=2)
  tf.random.set_seed(0)
  encoder = TextEncoder(20, config)
  ids = tf.constant([[5, 6, 7, PAD, PAD, PAD], [PAD] * 6, [5, 6, 7, PAD, PAD, PAD]])
  wider = tf.pad(ids, [[0, 0], [0, 4]])   # the same texts with more padding
  out, out_wider = encoder(ids).numpy(), encoder(wider).numpy()
  assert out.shape == (3, 8)
  np.testing.assert_allclose(out, out_wider, atol=1e-6)
  np.testing.assert_array_equal(out[1], np.zeros(8))
  np.testing.assert_allclose(out[0], out[2], atol=1e-6)
  # Different words give different vectors.
  other = encoder(tf.constant([[8, 9, 10, PAD, PAD, PAD]])).numpy()
  assert np.abs(other[0] - out[0]).max() > 1e-4


@pytest.mark.parametrize("kind", ["cnn", "attention"])
def test_order_aware_encoders_see_word_order(kind):
  config = ModelConfig(text_encoder=kind, text_dim=8, text_heads=2)
  tf.random.set_seed(1)
  encoder = TextEncoder(20, config)
  out = encoder(tf.constant([[5, 6, 7, 8], [8, 7, 6, 5]])).numpy()
  if kind == "cnn":
    assert np.abs(out[0] - out[1]).max() > 1e-4
  else:
    # Self-attention without positions is order-invariant, as NRMS's encoder is: the
    # pooled vector of a permuted title is the same.
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def _item_tower(id_dropout, counts):
  config = ModelConfig(embedding_dim=4, id_embedding_dim=4, item_layers=(8,))
  tf.random.set_seed(2)
  return ItemTower(len(counts), [], config, id_dropout=id_dropout, train_counts=counts, seed=3)


def test_items_without_training_events_read_the_oov_row():
  counts = np.array([0, 0, 5, 3, 0])   # pad, oov, 2 warm items, 1 cold
  tower = _item_tower(0.1, counts)
  out = tower({"item_id": tf.constant([2, 3, 4, FIRST_OOV])}).numpy()
  np.testing.assert_allclose(out[2], out[3], atol=1e-6)       # cold == OOV
  assert np.abs(out[0] - out[2]).max() > 1e-4
  # Without item id dropout the OOV row is never trained, so nothing is mapped.
  plain = _item_tower(0.0, counts)
  out = plain({"item_id": tf.constant([4, FIRST_OOV])}).numpy()
  assert np.abs(out[0] - out[1]).max() > 1e-4


def test_item_id_dropout_drops_every_item_about_equally_often_in_training_only():
  # 100 popular items (100 events each) and 900 tail items (1 event each): mean count 10.9.
  counts = np.concatenate([[0, 0], np.full(100, 100), np.ones(900, int)])
  tower = _item_tower(0.05, counts)
  ids = tf.constant(np.arange(2, 1002))
  draws = np.stack([tower.embedding_ids(ids, training=True).numpy() == FIRST_OOV
                    for _ in range(200)])
  rate = draws.mean(axis=0)
  # Per row: min(1, 0.05 * 10.9 / count): 0.00545 for a popular item, 0.545 for a tail one,
  # so per epoch each is dropped about 0.545 times (row dropout would drop the popular 5x).
  np.testing.assert_allclose(rate[:100].mean(), 0.00545, atol=0.002)
  np.testing.assert_allclose(rate[100:].mean(), 0.545, atol=0.02)
  assert abs(rate[:100].mean() * 100 - rate[100:].mean() * 1) < 0.1
  np.testing.assert_array_equal(tower.embedding_ids(ids, training=False).numpy(), ids.numpy())


def test_the_trained_mask_is_restored_from_a_checkpoint(tmp_path):
  tower = _item_tower(0.1, np.array([0, 0, 4, 2, 1]))
  tower({"item_id": tf.constant([2])})
  path = tf.train.Checkpoint(tower=tower).save(str(tmp_path / "ckpt"))
  narrower = _item_tower(0.1, np.array([0, 0, 4, 0, 0]))
  narrower({"item_id": tf.constant([2])})
  tf.train.Checkpoint(tower=narrower).read(path).expect_partial()
  np.testing.assert_array_equal(narrower.trained_ids.numpy(), [False, False, True, True, True])


def test_auto_item_id_dropout_follows_id_dropout_only_with_text():
  from twotower.config import item_id_dropout
  config = Config()
  assert item_id_dropout(config) == 0.0
  config.data.text_features = ("title",)
  assert item_id_dropout(config) == config.model.id_dropout
  config.model.item_id_dropout = 0.2
  assert item_id_dropout(config) == 0.2


def _text_config():
  from conftest import tiny_config
  config = tiny_config()
  config.data.text_features = ("tags",)      # the synthetic item table's multi-valued column
  config.model.text_encoder = "attention"
  config.model.text_dim = 8
  config.model.text_heads = 2
  return config


def test_a_text_run_trains_and_warm_starts_with_the_text_vocabulary_kept(tmp_path):
  from twotower.jobs import train as train_job
  from twotower.training import warm_start
  from twotower.workdir import Workdir, load_trained
  parent_dir, child_dir = str(tmp_path / "parent"), str(tmp_path / "child")
  train_job.train(_text_config(), parent_dir)
  parent = load_trained(parent_dir)
  spec = {s.name: s for s in parent.data.item_features.specs}["tags"]
  assert spec.kind == types.TEXT
  child_config = _text_config()
  child_config.data.synthetic_items = 200
  child_config.data.synthetic_interactions = 3000
  child_config.train.init_from = parent_dir
  train_job.train(child_config, child_dir)
  init = tf.train.load_checkpoint(Workdir(child_dir).checkpoints + "/" + warm_start.INIT)
  key = "model/item_tower/features/_embeddings/tags/embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
  before = tf.train.load_checkpoint(Workdir(parent_dir).best).get_tensor(key)
  after = init.get_tensor(key)
  assert after.shape[0] >= before.shape[0]
  np.testing.assert_array_equal(after[:before.shape[0]], before)   # old tokens keep rows


def test_the_automatic_queue_is_on_only_for_items_with_an_order_aware_text_encoder():
  from conftest import tiny_config

  from twotower.model import retrieval
  config = tiny_config()
  config.loss.queue_size = -1
  config.data.synthetic_items = 3000       # a catalogue large enough for a queue of B
  config.data.text_features = ("tags",)
  data = prepare.prepare(prepare.load_raw(config.data), config.data)
  sizes = {}
  for kind in ("mean", "cnn", "attention"):
    config.model.text_encoder = kind
    model = retrieval.build_retrieval_model(data, config)
    sizes[kind] = model.task.queue.size if model.task.queue is not None else 0
  assert sizes == {"mean": 0, "cnn": 375, "attention": 375}
