"""Mining the ranking head's training examples: each example interaction's exact retrieval
top-N (the user's known items out), and hard negatives drawn afresh each epoch from it.

Examples come from the trained retrieval model, so the head learns the decision it faces at
serving: which of the retrieved candidates the user actually takes. The positive is joined
by ``npratio`` negatives drawn from the query's top-N (hard negatives), optionally mixed with
uniform corpus items. Only positives that the top-N would contain are kept
(``reachable_only``): the head never sees the others at serving, and keeping them pairs
low-scored positives with top-scored negatives, which teaches the head to distrust the
retrieval score (measured on MovieLens-100K: the re-ranked NDCG@10 fell below the retrieval
order's). ``examples=valid`` trains on validation interactions instead, which the retrieval
model never fitted, holding out a share of the validation users for early stopping.

Mining costs anchors x corpus, so it is bounded on both sides: at most ``max_examples``
anchors, a seeded sample (ML-100K keeps all of its ~80k), and past ``ann_min_items`` the
top-N comes from an approximate searcher (``search``, given by jobs/train_ranking.py, which
owns the index) instead of exact products with every item.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from twotower import topk
from twotower.config import RankingConfig
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.data.itemsets import ItemSets
from twotower.data.keys import contains, pair_keys
from twotower.data.keys import unique as unique_keys
from twotower.errors import ConfigError
from twotower.model.encoding import Encoder


def positive_labels(data: prepare_lib.PreparedData, events: np.ndarray,
                    rating_threshold: Optional[float]) -> np.ndarray:
  """float32 [E]: 1 where the event counts as positive (rating >= the threshold; every
  event without one), else 0."""
  if rating_threshold is None:
    return np.ones(len(events), np.float32)
  if data.events.label is None:
    raise ConfigError("--ranking_rating_threshold needs ratings, but the interactions have "
                      "no rating / label column")
  return (data.events.label[events] >= rating_threshold).astype(np.float32)


# (queries [Q, D], k, exclude: one row of corpus indices per query) -> top-k rows [Q, k],
# best first, -1 padded: the exact top-k by default, a ScaNN searcher past ann_min_items.
Search = Callable[[np.ndarray, int, ItemSets], np.ndarray]


def exact_search(corpus: np.ndarray) -> Search:
  """The exact top-k over ``corpus`` (twotower.topk), laid out once for every chunk."""
  layout = topk.Corpus(corpus)
  return lambda queries, k, exclude: topk.top_k_items(queries, layout, k, exclude)[0]


def sample_rows(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted positions of at most ``limit`` of ``count`` rows, drawn by ``rng`` without
  replacement; all of them when ``limit`` is 0 or at least ``count``."""
  if limit <= 0 or count <= limit:
    return np.arange(count)
  return np.sort(rng.choice(count, limit, replace=False))


@dataclasses.dataclass
class TrainingExamples:
  """Anchor events (the positives) and the retrieval candidates of each anchor's query."""
  events: np.ndarray        # int64 [E] event indices
  labels: np.ndarray        # float32 [E]: 1 positive, 0 an interaction rated below threshold
  candidates: np.ndarray    # int64 [E, N] corpus indices, -1 padded
  known: np.ndarray         # sorted user * num_items + corpus index of training items


def holdout_users(data: prepare_lib.PreparedData, config: RankingConfig) -> np.ndarray:
  """Validation users whose validation interactions stay out of the head's training
  (examples=valid); sorted user ids, chosen by the seed. Empty for examples=train."""
  if config.examples != "valid":
    return np.zeros(0, np.int64)
  ev = data.events
  users = np.unique(ev.user[ev.split == splits.VALID])
  rng = np.random.default_rng([config.seed, 99])
  count = int(round(len(users) * config.holdout_fraction))
  return np.sort(users[rng.permutation(len(users))[:count]])


def mine_training_examples(data: prepare_lib.PreparedData, encoder: Encoder,
                           corpus: np.ndarray, config: RankingConfig, history_length: int,
                           chunk: int = 8192,
                           search: Optional[Search] = None) -> TrainingExamples:
  """Retrieval top-N of every example interaction's query, the user's known items out.

  examples=train: every training interaction; known items are the user's training items.
  examples=valid: the validation interactions of users outside ``holdout_users``, which the
  retrieval model never trained on, so its scores there look as they will on new data;
  known items are the user's training and validation items. At most
  ``config.max_examples`` of them, drawn with ``config.seed``; ``search`` finds the top-N
  (default: exact over ``corpus``).
  """
  ev = data.events
  offset, num_items = data.item_vocab.offset, data.num_items
  if config.examples == "train":
    anchors = np.flatnonzero(ev.split == splits.TRAIN)
    seen = anchors
  else:
    anchors = np.flatnonzero((ev.split == splits.VALID)
                             & ~np.isin(ev.user, holdout_users(data, config)))
    seen = np.flatnonzero(ev.split <= splits.VALID)
  labels = positive_labels(data, anchors, config.rating_threshold)
  if config.rating_threshold is not None:
    if config.loss == "softmax":   # a listwise example needs its positive
      anchors, labels = anchors[labels > 0], labels[labels > 0]
  if len(anchors) == 0:
    raise ConfigError(f"no positive {config.examples} interactions to train the ranking "
                      f"head on (--ranking_examples, --ranking_rating_threshold)")
  keep = sample_rows(len(anchors), config.max_examples,
                     np.random.default_rng([config.seed, 17]))
  anchors, labels = anchors[keep], labels[keep]
  search = search or exact_search(corpus)
  user_seen = ItemSets.from_pairs(ev.user[seen], ev.item[seen] - offset, len(data.user_vocab))
  known = unique_keys(pair_keys(ev.user[seen], ev.item[seen] - offset, num_items))
  candidates = np.empty((len(anchors), config.num_candidates), np.int64)
  reachable = np.ones(len(anchors), bool)
  for lo in range(0, len(anchors), chunk):
    idx = anchors[lo:lo + chunk]
    history = prepare_lib.gather_history(ev.item, ev.user_start[idx], ev.history_end[idx],
                                         history_length)
    queries = encoder.users(ev.user[idx], history)
    top = search(queries, config.num_candidates, user_seen.subset(ev.user[idx]))
    candidates[lo:lo + len(idx)] = top
    # The positive (excluded as a known item) would make the top-N iff it outscores the
    # N-th candidate; a short list means the corpus ran out, so everything makes it.
    positive = np.einsum("qd,qd->q", queries, corpus[ev.item[idx] - offset])
    last = np.einsum("qd,qd->q", queries, corpus[np.maximum(top[:, -1], 0)])
    reachable[lo:lo + len(idx)] = (positive >= last) | (top[:, -1] < 0)
  if config.reachable_only:
    anchors, labels, candidates = anchors[reachable], labels[reachable], candidates[reachable]
  if len(anchors) == 0:
    raise ConfigError("no example interaction is within its query's retrieval top-N; raise "
                      "--ranking_num_candidates or set --noranking_reachable_only")
  return TrainingExamples(anchors.astype(np.int64), labels, candidates, known)


def sample_negatives(candidates: np.ndarray, users: np.ndarray, known: np.ndarray,
                     num_items: int, npratio: int, random_fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
  """[E, npratio] corpus indices: hard ones uniformly from each row's candidates, the rest
  uniform over the corpus, never one of the user's known items nor a repeat in the row."""
  num_random = int(round(npratio * random_fraction))
  num_hard = npratio - num_random
  rows = len(candidates)
  out = np.full((rows, npratio), -1, np.int64)
  if num_hard:
    keys = rng.random(candidates.shape)
    keys[candidates < 0] = np.inf
    pick = np.argpartition(keys, num_hard - 1, axis=1)[:, :num_hard]
    chosen = np.take_along_axis(candidates, pick, axis=1)
    out[:, :num_hard] = np.where(np.isinf(np.take_along_axis(keys, pick, axis=1)), -1, chosen)
  # Uniform negatives; also fill hard slots a short candidate list could not.
  for _ in range(20):
    missing = out < 0
    if not missing.any():
      break
    r, c = np.nonzero(missing)
    draw = rng.integers(0, num_items, len(r))
    bad = contains(known, pair_keys(users[r], draw, num_items))
    bad |= (out[r] == draw[:, None]).any(axis=1)
    # Two draws into the same row in one round may collide: keep the first.
    _, first = np.unique(pair_keys(r, draw, num_items), return_index=True)
    repeat = np.ones(len(r), bool)
    repeat[first] = False
    good = ~(bad | repeat)
    out[r[good], c[good]] = draw[good]
  if (out < 0).any():
    raise ConfigError("could not sample enough negatives: the catalogue is too small for "
                      f"--ranking_npratio={npratio}")
  return out
