"""The synthetic generator: contracts, determinism and the structure it plants."""
from __future__ import annotations

import numpy as np
import pytest

from twotower.data import synthetic, types

SMALL = dict(num_users=600, num_items=1000, num_interactions=15_000)


@pytest.fixture(scope="module")
def data():
  return synthetic.generate(synthetic.SyntheticConfig(**SMALL))


def _index(ids: np.ndarray) -> np.ndarray:
  return np.array([int(s[1:]) for s in ids], np.int64)


def _same(a: synthetic.SyntheticData, b: synthetic.SyntheticData) -> bool:
  ia, ib = a.dataset.interactions, b.dataset.interactions
  checks = [np.array_equal(ia.user_id, ib.user_id), np.array_equal(ia.item_id, ib.item_id),
            np.array_equal(ia.timestamp, ib.timestamp), np.array_equal(ia.label, ib.label),
            np.array_equal(a.item_factors, b.item_factors),
            np.array_equal(a.user_factors, b.user_factors)]
  for ta, tb in ((a.dataset.user_features, b.dataset.user_features),
                 (a.dataset.item_features, b.dataset.item_features)):
    checks += [np.array_equal(ta.columns[k], tb.columns[k]) for k in ta.columns]
  return all(checks)


def test_deterministic_under_seed_and_independent_of_threads():
  cfg = dict(SMALL, chunk_size=2000)     # several chunks, so threads interleave
  one = synthetic.generate(synthetic.SyntheticConfig(**cfg, num_threads=1))
  many = synthetic.generate(synthetic.SyntheticConfig(**cfg, num_threads=3))
  assert _same(one, many)
  assert _same(one, synthetic.generate(synthetic.SyntheticConfig(**cfg, num_threads=1)))
  other = synthetic.generate(synthetic.SyntheticConfig(**cfg, seed=1))
  assert not np.array_equal(one.dataset.interactions.item_id, other.dataset.interactions.item_id)


def test_matches_the_data_contracts(data):
  cfg = data.config
  ds = data.dataset
  assert isinstance(ds, types.RawDataset) and ds.name == "synthetic"
  inter = ds.interactions
  n = cfg.num_interactions
  assert len(inter) == n
  for col in (inter.user_id, inter.item_id):
    assert col.dtype == object and col.shape == (n,) and isinstance(col[0], str)
  assert inter.user_id[0].startswith("u") and inter.item_id[0].startswith("i")
  assert inter.timestamp.dtype == np.int64 and inter.timestamp.shape == (n,)
  assert inter.label.dtype == np.float32 and set(np.unique(inter.label)) <= {1, 2, 3, 4, 5}
  assert len(np.unique(inter.label)) == 5
  np.testing.assert_array_equal(inter.line_numbers, np.arange(n) + 2)
  assert set(np.unique(inter.user_id)) == {f"u{k}" for k in range(cfg.num_users)}
  assert set(np.unique(inter.item_id)) <= {f"i{k}" for k in range(cfg.num_items)}

  users, items = ds.user_features, ds.item_features
  assert list(users.columns) == ["user_id", "segment", "region"]
  assert list(items.columns) == ["item_id", "category", "tags", "price_bucket"]
  assert users.kinds == {"user_id": types.TOKEN, "segment": types.TOKEN, "region": types.TOKEN}
  assert items.kinds["tags"] == types.TOKEN_SEQ and items.kinds["category"] == types.TOKEN
  for table, rows in ((users, cfg.num_users), (items, cfg.num_items)):
    assert table.path == "<synthetic>" and len(table) == rows
    np.testing.assert_array_equal(table.line_numbers, np.arange(rows) + 2)
    for col in table.columns.values():
      assert col.dtype == object and col.shape == (rows,) and isinstance(col[0], str)
  np.testing.assert_array_equal(users.columns["user_id"], [f"u{k}" for k in range(cfg.num_users)])
  np.testing.assert_array_equal(items.columns["item_id"], [f"i{k}" for k in range(cfg.num_items)])
  num_tags = np.array([len(t.split(" ")) for t in items.columns["tags"]])
  assert num_tags.min() == 2 and num_tags.max() == 4

  d, U, N = cfg.latent_dim, cfg.num_users, cfg.num_items
  assert data.user_factors.shape == (U, d) and data.user_factors.dtype == np.float32
  assert data.item_factors.shape == (N, d) and data.item_factors.dtype == np.float32
  assert data.item_cluster.shape == (N,) and data.item_cluster.max() < cfg.num_clusters
  assert data.user_segment.shape == (U,)
  assert data.item_popularity.shape == (N,) and (data.item_popularity > 0).all()
  assert data.item_popularity.sum() == pytest.approx(1.0)


def test_every_user_has_enough_events_in_time_order(data):
  cfg = data.config
  inter = data.dataset.interactions
  user = _index(inter.user_id)
  assert (np.diff(user) >= 0).all()                       # grouped by user
  assert np.bincount(user, minlength=cfg.num_users).min() >= 3
  same_user = user[1:] == user[:-1]
  step = np.diff(inter.timestamp)
  assert (step[same_user] >= 0).all()
  assert (step[same_user] == 0).any()                     # a few ties, as in real logs
  assert inter.timestamp.min() >= cfg.start_time
  assert inter.timestamp.max() <= cfg.start_time + cfg.time_span


def test_activity_and_popularity_are_heavy_tailed(data):
  inter = data.dataset.interactions
  item, user = _index(inter.item_id), _index(inter.user_id)
  counts = np.sort(np.bincount(item, minlength=data.config.num_items))[::-1]
  top = counts[:len(counts) // 10].sum() / counts.sum()
  assert top > 0.3                                        # uniform would be 0.1
  prior = np.sort(data.item_popularity)[::-1]
  assert prior[:len(prior) // 10].sum() > 0.3
  activity = np.bincount(user)
  assert activity.max() > 5 * np.median(activity)
  assert activity.max() <= data.config.max_user_fraction * data.config.num_items


def test_repeats_are_rare():
  inter = synthetic.generate(synthetic.SyntheticConfig()).dataset.interactions   # defaults
  key = np.char.add(inter.user_id.astype(str), np.char.add("|", inter.item_id.astype(str)))
  assert 1 - len(np.unique(key)) / len(key) < 0.04


def _recall_at(scores, train, target, k=20):
  scores = np.where(train, -np.inf, scores)
  top = np.argpartition(-scores, k, axis=1)[:, :k]
  hits = np.take_along_axis(target, top, axis=1).sum(axis=1)
  has = target.any(axis=1)
  return float((hits[has] / np.minimum(k, target.sum(axis=1)[has])).mean())


def test_planted_structure_is_learnable(data):
  cfg = data.config
  inter = data.dataset.interactions
  user, item = _index(inter.user_id), _index(inter.item_id)
  # Hold out each user's last 20% of events by time.
  start = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
  count = np.diff(np.r_[start, len(user)])
  pos = np.arange(len(user)) - np.repeat(start, count)
  test = pos >= np.repeat(count - np.maximum(1, count // 5), count)
  shape = (cfg.num_users, cfg.num_items)
  train = np.zeros(shape, bool)
  train[user[~test], item[~test]] = True
  target = np.zeros(shape, bool)
  target[user[test], item[test]] = True
  target &= ~train
  users = np.arange(cfg.num_users)

  oracle = _recall_at(data.log_probs(users), train, target)
  dot = data.user_factors @ data.item_factors.T / cfg.affinity_temperature
  dot_pop = _recall_at(dot + np.log(data.item_popularity), train, target)
  pop = np.bincount(item[~test], minlength=cfg.num_items).astype(np.float64)
  most_popular = _recall_at(np.tile(pop, (cfg.num_users, 1)), train, target)
  random = _recall_at(np.random.default_rng(0).random(shape), train, target)
  assert oracle > 0.4
  assert dot_pop > 0.9 * oracle            # the plain formula is nearly as good
  assert oracle > 2 * most_popular and oracle - most_popular > 0.25
  assert oracle > 10 * random and most_popular > 2 * random


def test_log_probs_are_the_sampling_distribution():
  # Without the redraw of repeats, events follow log_probs (up to importance resampling):
  # their mean log-likelihood matches the expectation under log_probs itself.
  cfg = synthetic.SyntheticConfig(**SMALL, resample_rounds=0, candidates=64)
  data = synthetic.generate(cfg)
  inter = data.dataset.interactions
  user, item = _index(inter.user_id), _index(inter.item_id)
  logp = data.log_probs(np.arange(cfg.num_users)).astype(np.float64)
  p = np.exp(logp)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-4)
  observed = logp[user, item].mean()
  weight = np.bincount(user, minlength=cfg.num_users) / len(user)
  expected = (weight * (p * logp).sum(axis=1)).sum()
  assert abs(observed - expected) < 0.05
  popularity_only = np.log(data.item_popularity[item]).mean()
  assert observed > popularity_only + 1.0


def test_side_features_follow_the_factors(data):
  cfg = data.config
  users, items = data.dataset.user_features, data.dataset.item_features
  category = _index(items.columns["category"])
  assert (category == data.item_cluster).mean() > 0.85
  # Tags come mostly from the item's own cluster's tag range.
  T = cfg.tags_per_cluster
  own = [np.mean([int(t[1:]) // T == c for t in tags.split(" ")])
         for tags, c in zip(items.columns["tags"], data.item_cluster)]
  assert np.mean(own) > 0.75
  segment = _index(users.columns["segment"])
  np.testing.assert_array_equal(segment, data.user_segment)
  np.testing.assert_array_equal(
      segment, np.argmax(data.user_factors @ data.cluster_centroids.T, axis=1))
  region = _index(users.columns["region"])
  assert (region == segment % cfg.num_regions).mean() > 0.6
  np.testing.assert_array_equal(_index(items.columns["price_bucket"]), data.item_price_bucket)
  # Users mostly interact with items of their own segment's cluster.
  inter = data.dataset.interactions
  item_cluster = data.item_cluster[_index(inter.item_id)]
  assert (item_cluster == segment[_index(inter.user_id)]).mean() > 0.35   # 1 / K = 0.05


def test_nonlinear_cross_is_planted():
  def preferred_share(weight):
    data = synthetic.generate(synthetic.SyntheticConfig(**SMALL, nonlinear_weight=weight))
    inter = data.dataset.interactions
    user, item = _index(inter.user_id), _index(inter.item_id)
    preferred = data.preferred_bucket[data.user_region[user]]
    return (data.item_price_bucket[item] == preferred).mean(), data

  base, _ = preferred_share(0.0)
  crossed, data = preferred_share(2.0)
  assert base < 0.35 and crossed > base + 0.25
  # No main effect: every bucket is some region's favourite, none far more than others.
  favourites = np.bincount(data.preferred_bucket, minlength=data.config.num_price_buckets)
  assert favourites.min() >= 1 and favourites.max() - favourites.min() <= 1


def test_load_raw_and_prepare_accept_it():
  from twotower.config import DataConfig
  from twotower.data import prepare
  config = DataConfig(dataset="synthetic", synthetic_users=200, synthetic_items=150,
                      synthetic_interactions=3000)
  raw = prepare.load_raw(config)
  assert raw.name == "synthetic" and len(raw.interactions) == 3000
  prepared = prepare.prepare(raw, config)
  assert len(prepared.events.user) == 3000


def test_rejects_impossible_configs():
  with pytest.raises(ValueError, match="too few"):
    synthetic.generate(synthetic.SyntheticConfig(num_users=100, num_interactions=250))
  with pytest.raises(ValueError, match="temperature"):
    synthetic.generate(synthetic.SyntheticConfig(affinity_temperature=0.0))


def test_topic_count_and_temperature_flags_reach_the_generator():
  """--synthetic_clusters sets the planted topics (each item's category is one of them) and
  --synthetic_affinity_temperature how peaked users are: colder users concentrate their
  events on fewer topics."""
  from twotower.config import DataConfig
  from twotower.data import prepare

  def load(**knobs):
    return prepare.load_raw(DataConfig(dataset="synthetic", synthetic_users=300,
                                       synthetic_items=400, synthetic_interactions=6000,
                                       **knobs))
  assert set(load(synthetic_clusters=3).item_features.columns["category"]) == {"c0", "c1", "c2"}

  def topics_per_user(raw):
    category = dict(zip(raw.item_features.columns["item_id"],
                        raw.item_features.columns["category"]))
    users = {}
    for user, item in zip(raw.interactions.user_id, raw.interactions.item_id):
      users.setdefault(user, set()).add(category[item])
    return np.mean([len(c) for c in users.values()])
  assert (topics_per_user(load(synthetic_affinity_temperature=0.05))
          < topics_per_user(load(synthetic_affinity_temperature=1.0)))


def test_titles_have_n_words_that_carry_the_topic_noisily():
  """--synthetic_title_tokens=N: every item has a title of N single-token words, and its
  topic words name the item's cluster for most items but not all (a noisy, real-ish text)."""
  data = synthetic.generate(synthetic.SyntheticConfig(**SMALL, title_tokens=16))
  items = data.dataset.item_features
  titles = items.columns["title"]
  assert titles.dtype == object and len(titles) == data.config.num_items
  assert items.kinds["title"] == types.TOKEN_SEQ     # text once --text_features=title
  words = np.array([t.split(" ") for t in titles])
  assert words.shape == (data.config.num_items, 16)
  assert all(w.isascii() and (w.isalnum()) for w in np.unique(words))
  counts = synthetic.title_topic_counts(titles, data.config)
  accuracy = np.mean(counts.argmax(axis=1) == data.item_cluster)
  assert 0.75 < accuracy < 0.98, accuracy
  # Function words, shared by every topic, are a good share of the words.
  noise = np.isin(words, synthetic.FUNCTION_WORDS).mean()
  assert 0.3 < noise < 0.5


def test_titles_are_seeded_and_leave_the_rest_of_the_data_unchanged():
  cfg = dict(SMALL, num_items=2 * synthetic._TITLE_ITEMS, title_tokens=6)   # two units
  one = synthetic.generate(synthetic.SyntheticConfig(**cfg))
  titles = one.dataset.item_features.columns["title"]
  np.testing.assert_array_equal(
      titles, synthetic.generate(synthetic.SyntheticConfig(**cfg, num_threads=1))
      .dataset.item_features.columns["title"])
  other = synthetic.generate(synthetic.SyntheticConfig(**cfg, seed=1))
  assert np.mean(titles == other.dataset.item_features.columns["title"]) < 0.01
  # Units draw from their own seeds: equal-sized ones must not repeat their titles.
  assert len(np.unique(titles)) == len(titles)
  plain = synthetic.generate(synthetic.SyntheticConfig(**dict(cfg, title_tokens=0)))
  assert "title" not in plain.dataset.item_features.columns
  assert _same(plain, one)        # every other column, the events and the truth


def _prepared(**knobs):
  from twotower.config import DataConfig
  from twotower.data import prepare
  config = DataConfig(dataset="synthetic", synthetic_users=800, synthetic_items=600,
                      synthetic_interactions=24_000, **knobs)
  raw = prepare.load_raw(config)
  return raw, prepare.prepare(raw, config)


@pytest.mark.parametrize("split", [{}, dict(valid_fraction=0.05, test_fraction=0.05)])
def test_cold_items_have_no_training_events_but_have_held_out_targets(split):
  """--synthetic_cold_items: that share of the items never occurs in the training split of
  the per-user temporal split (any fractions) but does in validation and test, so the cold
  slice is measurable; they stay in the item table and the retrievable corpus."""
  from twotower.data import splits
  raw, data = _prepared(synthetic_cold_items=0.1, synthetic_title_tokens=4, **split)
  items = raw.item_features.columns["item_id"]
  assert len(items) == 600 and "title" in raw.item_features.columns
  events = data.events
  train_items = np.unique(events.item[events.split == splits.TRAIN])
  cold = np.setdiff1d(data.item_vocab.lookup(items), train_items)
  assert 0.09 * 600 <= len(cold) <= 0.12 * 600           # ~10%, a few warm ones never drawn
  for code in (splits.VALID, splits.TEST):
    on_cold = np.isin(events.item[events.split == code], cold)
    assert 0.04 < on_cold.mean() < 0.4, (code, on_cold.mean())   # new: not yet seen
  # Users keep their event counts: only which items they saw moved.
  plain_raw, _ = _prepared(**split)
  np.testing.assert_array_equal(np.unique(raw.interactions.user_id, return_counts=True)[1],
                                np.unique(plain_raw.interactions.user_id, return_counts=True)[1])


def test_cold_items_are_the_ones_without_training_events():
  cfg = synthetic.SyntheticConfig(num_users=800, num_items=600, num_interactions=24_000,
                                  cold_items=0.1)
  data = synthetic.generate(cfg)
  assert data.item_cold.sum() == 60
  from twotower.config import DataConfig
  from twotower.data import prepare, splits
  config = DataConfig(dataset="synthetic")
  prepared = prepare.prepare(data.dataset, config)
  ev = prepared.events
  cold_ids = prepared.item_vocab.lookup(synthetic.ids("i", 600)[data.item_cold])
  on_cold = np.isin(ev.item, cold_ids)
  assert not (on_cold & (ev.split == splits.TRAIN)).any()
  assert (on_cold & (ev.split == splits.TEST)).sum() > 50
  with pytest.raises(ValueError, match="cold_items"):
    synthetic.generate(synthetic.SyntheticConfig(**SMALL, cold_items=1.0))
