"""Vocabularies, the temporal split and the history the pipeline builds."""
import numpy as np
import pytest
import tf_keras

from twotower.config import DataConfig
from twotower.data import pipeline, splits, types
from twotower.data.prepare import eval_queries, gather_history, prepare
from twotower.data.vocab import PAD, Vocabulary


def test_vocabulary_matches_keras_string_lookup_including_oov(tmp_path):
  v = Vocabulary.build(np.array(["a", "b", "a", "", "c", "c", "c"], object), num_oov_buckets=3)
  assert list(v.tokens) == ["c", "a", "b"]           # by frequency, ties by token
  values = np.array([["a", "unseen"], ["", "c"], ["zz", "b"]], object)
  layer = tf_keras.layers.StringLookup(vocabulary=list(v.tokens), mask_token="",
                                       num_oov_indices=3)
  np.testing.assert_array_equal(v.lookup(values), layer(values.astype(str)).numpy())
  v.save(str(tmp_path / "v.txt"))
  loaded = Vocabulary.load(str(tmp_path / "v.txt"))
  np.testing.assert_array_equal(loaded.lookup(values), v.lookup(values))


def _raw(n_users=30, per_user=12, seed=0, ties=True):
  rng = np.random.default_rng(seed)
  users = np.repeat(np.arange(n_users), per_user)
  items = rng.integers(0, 50, len(users))
  ts = np.concatenate([np.sort(rng.integers(0, 6 if ties else 10**6, per_user))
                       for _ in range(n_users)])
  perm = rng.permutation(len(users))
  inter = types.Interactions("mem", np.array([f"u{u}" for u in users[perm]], object),
                             np.array([f"i{i}" for i in items[perm]], object),
                             ts[perm].astype(np.int64))
  return types.RawDataset("test", inter)


@pytest.mark.parametrize("ties", [True, False])
def test_split_has_no_leakage(ties):
  data = prepare(_raw(ties=ties), DataConfig(valid_fraction=0.2, test_fraction=0.2))
  ev = data.events
  for u in np.unique(ev.user):
    rows = ev.user == u
    ts, code = ev.timestamp[rows], ev.split[rows]
    assert (code == splits.TRAIN).any()
    for later, earlier in ((splits.VALID, splits.TRAIN), (splits.TEST, splits.VALID),
                           (splits.TEST, splits.TRAIN)):
      if (code == later).any() and (code == earlier).any():
        assert ts[code == later].min() >= ts[code == earlier].max()
    # Codes are non-decreasing in time order: no train event after a held-out one.
    assert (np.diff(code) >= 0).all()
  assert (ev.split == splits.TEST).sum() > 0 and (ev.split == splits.VALID).sum() > 0


def test_users_below_minimum_keep_everything_in_train():
  codes = splits.temporal_split(np.array([0, 0, 1, 1, 1, 1]), np.arange(6),
                                valid_fraction=0.25, test_fraction=0.25,
                                min_user_interactions=3)
  np.testing.assert_array_equal(codes, [0, 0, 0, 0, 1, 2])


def test_training_history_is_strictly_earlier_and_same_user():
  data = prepare(_raw(), DataConfig())
  ds = pipeline.training_dataset(data, batch_size=64, history_length=5, seed=0)
  ev = data.events
  by_user = {}
  for i in range(len(ev)):
    by_user.setdefault(int(ev.user[i]), []).append((int(ev.timestamp[i]), int(ev.item[i])))
  seen = 0
  for batch in ds:
    users = batch["user"]["user_id"].numpy()
    hist = batch["user"]["history"].numpy()
    targets = batch["item"]["item_id"].numpy()
    for u, h, t in zip(users, hist, targets):
      events = by_user[int(u)]
      # The target event: some event of this user with this item.
      times = [ts for ts, it in events if it == t]
      assert times
      allowed_items = {it for ts, it in events if ts < max(times)}
      assert set(h[h != PAD]) <= allowed_items
      seen += 1
  assert seen == (ev.split == splits.TRAIN).sum()     # every training event, once


def test_an_epochs_batches_are_not_autotuned():
  # Deleting an autotuned iterator at an epoch's end waited for tf.data's autotuning thread
  # (up to 4.8 s per ranking-head epoch of 6 s); every epoch builds a new one.
  data = prepare(_raw(), DataConfig())
  ds = pipeline.training_dataset(data, batch_size=64, history_length=5, seed=0)
  assert ds.options().autotune.enabled is False


def test_numpy_and_tf_history_gather_agree():
  items = np.arange(1, 21, dtype=np.int32)
  start = np.array([0, 5, 10], np.int64)
  end = np.array([3, 12, 10], np.int64)
  want = gather_history(items, start, end, 4)
  np.testing.assert_array_equal(want[0], [0, 1, 2, 3])
  np.testing.assert_array_equal(want[1], [9, 10, 11, 12])
  np.testing.assert_array_equal(want[2], [0, 0, 0, 0])
  got = pipeline.gather_history(items, start, end, 4).numpy()
  np.testing.assert_array_equal(got, want)


def test_eval_queries_exclude_everything_before_the_split():
  data = prepare(_raw(), DataConfig(valid_fraction=0.2, test_fraction=0.2))
  q = eval_queries(data, splits.TEST, history_length=50)
  ev = data.events
  off = data.item_vocab.offset
  for r, u in enumerate(q.user):
    before = set(ev.item[(ev.user == u) & (ev.split != splits.TEST)] - off)
    assert set(q.exclude.row(r)) == before
    assert set(q.targets.row(r)) == set(ev.item[(ev.user == u) & (ev.split == splits.TEST)] - off)
    assert set(q.history[r][q.history[r] != PAD] - off) <= before
