"""From a raw dataset to everything training, evaluation and export need.

``prepare`` builds the vocabularies (ids from interactions and feature tables alike, so items
that only appear in the item table are still retrievable), encodes features, orders events
by (user, time), splits them per user by time, and records for each event where its
strictly-earlier history ends. Everything is vectorised numpy.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from absl import logging

from twotower.config import DataConfig
from twotower.data import features as features_lib
from twotower.data import splits as splits_lib
from twotower.data import types
from twotower.data.itemsets import ItemSets
from twotower.data.vocab import PAD, Vocabulary


@dataclasses.dataclass
class Events:
  """Interactions as vocabulary ids, sorted by (user, timestamp, file order)."""
  user: np.ndarray          # int32 user ids
  item: np.ndarray          # int32 item ids
  timestamp: np.ndarray     # int64
  label: Optional[np.ndarray]
  user_start: np.ndarray    # int64: index of the user's first event
  history_end: np.ndarray   # int64: events [user_start, history_end) are strictly earlier
  split: np.ndarray         # int8: splits.TRAIN / VALID / TEST

  def __len__(self):
    return len(self.user)


@dataclasses.dataclass
class PreparedData:
  name: str
  user_vocab: Vocabulary
  item_vocab: Vocabulary
  user_features: features_lib.FeatureTable
  item_features: features_lib.FeatureTable
  events: Events
  stats: dict
  item_table: Optional[types.Table] = None   # the raw item side table (the export shows it)

  @property
  def num_items(self) -> int:
    """Size of the retrievable corpus (known items only)."""
    return len(self.item_vocab.tokens)

  def corpus_ids(self) -> np.ndarray:
    """Item vocabulary ids of the corpus, in corpus order."""
    return np.arange(self.item_vocab.offset, len(self.item_vocab), dtype=np.int32)

  def train_item_counts(self) -> np.ndarray:
    """Training interactions per corpus item (the static logQ / most-popular table)."""
    train = self.events.item[self.events.split == splits_lib.TRAIN]
    return np.bincount(train - self.item_vocab.offset, minlength=self.num_items)

  def save_vocab(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self.user_vocab.save(os.path.join(directory, "user_id.txt"))
    self.item_vocab.save(os.path.join(directory, "item_id.txt"))
    for kind, table in (("user", self.user_features), ("item", self.item_features)):
      for spec in table.specs:
        spec.vocab.save(os.path.join(directory, f"{kind}.{spec.name}.txt"))
    features_lib.save_specs(os.path.join(directory, "features.json"),
                            self.user_features.specs, self.item_features.specs)


def load_raw(config: DataConfig) -> types.RawDataset:
  """The raw dataset named by the config: a built-in name, or files."""
  if config.interactions:
    from twotower.data import readers
    return readers.read_dataset_files(
        config.interactions, config.user_features, config.item_features,
        allow_bad_rows=config.allow_bad_rows)
  if config.dataset == "movielens-100k":
    from twotower.data import movielens
    return movielens.load_movielens_100k(config.cache_dir)
  if config.dataset == "synthetic":
    from twotower.data import synthetic
    return synthetic.generate(synthetic.SyntheticConfig(
        num_users=config.synthetic_users, num_items=config.synthetic_items,
        num_interactions=config.synthetic_interactions,
        nonlinear_weight=config.synthetic_nonlinear_weight,
        num_clusters=config.synthetic_clusters,
        affinity_temperature=config.synthetic_affinity_temperature,
        title_tokens=config.synthetic_title_tokens, cold_items=config.synthetic_cold_items,
        split_valid_fraction=config.valid_fraction, split_test_fraction=config.test_fraction,
        split_min_user_interactions=config.min_user_interactions)).dataset
  raise ValueError(f"--dataset must be 'movielens-100k' or 'synthetic' (or pass "
                   f"--interactions), got {config.dataset!r}")


def _without_features(ids: np.ndarray, vocab: Vocabulary, table: Optional[types.Table],
                      key: str) -> int:
  """Distinct ``ids`` (vocabulary ids) with no row in ``table``; they get PAD features."""
  if table is None:
    return 0
  return int(np.setdiff1d(ids, vocab.lookup(table.columns[key])).size)


def prepare(raw: types.RawDataset, config: DataConfig,
            base: Optional[features_lib.SavedVocabularies] = None) -> PreparedData:
  """Vocabularies, features, events and splits of a raw dataset.

  ``base``: a parent run's vocabularies (warm start): every vocabulary extends its parent's
  (``Vocabulary.extend``: old ids keep their rows, new ones are appended), and the feature
  columns must be the parent's.

  Interaction ids absent from a feature table are kept with default features and counted
  in ``stats`` (``users_without_features``, ``items_without_features``), as are the rows the
  readers skipped (``skipped_rows``). Users with fewer than ``min_user_interactions`` events
  train only; a dataset where that leaves nothing to validate or test is an error.
  """
  inter = raw.interactions
  if len(inter) == 0:
    raise types.DataError("no interactions", path=inter.path)
  key_values = lambda table, key: (table.columns[key] if table is not None
                                   else np.zeros(0, object))
  if config.text_features:
    features_lib.declare_text([raw.user_features, raw.item_features], config.text_features,
                              "--item_features or --user_features")
  user_ids = np.concatenate([inter.user_id, key_values(raw.user_features, "user_id")])
  item_ids = np.concatenate([inter.item_id, key_values(raw.item_features, "item_id")])
  if base is None:
    user_vocab = Vocabulary.build(user_ids, config.num_oov_buckets)
    item_vocab = Vocabulary.build(item_ids, config.num_oov_buckets)
  else:
    user_vocab, item_vocab = base.user_vocab.extend(user_ids), base.item_vocab.extend(item_ids)
  user_specs = features_lib.build_specs(raw.user_features, "user_id",
                                        max_tokens=config.max_tokens,
                                        num_oov_buckets=config.num_oov_buckets,
                                        text_max_tokens=config.text_max_tokens,
                                        base=base.user_specs if base else None)
  item_specs = features_lib.build_specs(raw.item_features, "item_id",
                                        max_tokens=config.max_tokens,
                                        num_oov_buckets=config.num_oov_buckets,
                                        text_max_tokens=config.text_max_tokens,
                                        base=base.item_specs if base else None)
  user_features = features_lib.encode_table(raw.user_features, "user_id", user_vocab, user_specs)
  item_features = features_lib.encode_table(raw.item_features, "item_id", item_vocab, item_specs)

  user = user_vocab.lookup(inter.user_id)
  item = item_vocab.lookup(inter.item_id)
  order = np.lexsort((np.arange(len(user)), inter.timestamp, user))
  user, item, ts = user[order], item[order], inter.timestamp[order]
  label = inter.label[order] if inter.label is not None else None
  split = splits_lib.temporal_split(user, ts, valid_fraction=config.valid_fraction,
                                    test_fraction=config.test_fraction,
                                    min_user_interactions=config.min_user_interactions)
  events = Events(user=user, item=item, timestamp=ts, label=label,
                  user_start=splits_lib.run_starts(user),
                  history_end=splits_lib.run_starts(user, ts), split=split)
  stats = {
      "interactions": int(len(user)),
      "users": int(len(user_vocab.tokens)),
      "items": int(len(item_vocab.tokens)),
      "train": int((split == splits_lib.TRAIN).sum()),
      "valid": int((split == splits_lib.VALID).sum()),
      "test": int((split == splits_lib.TEST).sum()),
      "skipped_rows": int(inter.skipped + sum(
          t.skipped for t in (raw.user_features, raw.item_features) if t is not None)),
      "users_without_features": _without_features(user, user_vocab, raw.user_features,
                                                  "user_id"),
      "items_without_features": _without_features(item, item_vocab, raw.item_features,
                                                  "item_id"),
  }
  if stats["train"] == 0:
    raise types.DataError("the training split is empty after splitting", path=inter.path)
  if (config.valid_fraction or config.test_fraction) and not (stats["valid"] or stats["test"]):
    raise types.DataError(
        f"nothing to validate or test: no user has the --min_user_interactions="
        f"{config.min_user_interactions} events needed to hold any out, so all "
        f"{stats['train']} interactions went to train ({stats['skipped_rows']} bad rows "
        f"skipped); add data or lower --min_user_interactions",
        path=inter.path)
  logging.info("prepared %s: %s", raw.name, stats)
  return PreparedData(raw.name, user_vocab, item_vocab, user_features, item_features,
                      events, stats, item_table=raw.item_features)


# Seed of the evaluation samples (--eval_users, --test_users): fixed rather than --seed, so
# that runs with different seeds are measured on the same users.
EVAL_SAMPLE_SEED = 20_181


@dataclasses.dataclass
class EvalQueries:
  """One query per user with held-out events in a split (or in a sample of its users)."""
  user: np.ndarray        # int32 user ids [U]
  history: np.ndarray     # int32 item ids [U, L], most recent last, PAD-padded in front
  targets: ItemSets       # corpus indices of the user's events in the split
  exclude: ItemSets       # corpus indices of everything the user did before the split
  split_users: int = 0    # users with events in the split, these U among them


def gather_history(items: np.ndarray, start: np.ndarray, end: np.ndarray,
                   length: int) -> np.ndarray:
  """items[max(start, end-L):end] per row, right-aligned and PAD-padded (numpy twin of
  pipeline.gather_history)."""
  pos = end[:, None] - length + np.arange(length)[None, :]
  valid = pos >= start[:, None]
  return np.where(valid, items[np.clip(pos, 0, max(len(items) - 1, 0))], PAD).astype(np.int32)


def sample_rows(num_rows: int, max_rows: int, seed) -> np.ndarray:
  """Sorted indices of a seeded sample of at most ``max_rows`` of ``num_rows`` rows; all of
  them when ``max_rows`` is 0 or covers them. A prefix of one seeded permutation, so a
  smaller sample is part of a larger one."""
  if max_rows <= 0 or max_rows >= num_rows:
    return np.arange(num_rows)
  return np.sort(np.random.default_rng(seed).permutation(num_rows)[:max_rows])


def eval_queries(data: PreparedData, split_code: int, history_length: int,
                 max_users: int = 0) -> EvalQueries:
  """The split's queries; with ``max_users`` > 0, those of a fixed sample of at most that
  many of its users (the same for every call: seeded by EVAL_SAMPLE_SEED and the split)."""
  ev = data.events
  idx = np.flatnonzero(ev.split == split_code)
  users, first = np.unique(ev.user[idx], return_index=True)
  split_users = len(users)
  if 0 < max_users < split_users:
    users = users[sample_rows(split_users, max_users, [EVAL_SAMPLE_SEED, split_code])]
    idx = idx[np.isin(ev.user[idx], users)]
    first = np.searchsorted(ev.user[idx], users)   # idx is sorted by user
  boundary = idx[first]                       # first held-out event of each user
  start = ev.user_start[boundary]
  history = gather_history(ev.item, start, boundary, history_length)
  row_of_user = np.searchsorted(users, ev.user[idx])
  targets = ItemSets.from_pairs(row_of_user, ev.item[idx] - data.item_vocab.offset, len(users))
  # Everything earlier than the split point: train for validation, train+valid for test.
  before = np.flatnonzero((ev.split < split_code) & np.isin(ev.user, users))
  exclude = ItemSets.from_pairs(np.searchsorted(users, ev.user[before]),
                                ev.item[before] - data.item_vocab.offset, len(users))
  return EvalQueries(users.astype(np.int32), history, targets, exclude, split_users)
