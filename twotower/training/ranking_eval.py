"""The ranking head's held-out evaluation: impressions and the two-stage re-rank.

Held-out impressions are built from the validation or test split's queries (one per user,
history up to the split) and the retrieval top-N, and scored with AUC, gAUC, MRR and
NDCG@5/10 per user, next to the towers' dot product on the same impressions (``dot_*``). End
to end, each user's retrieval top-N (earlier items excluded) is re-ranked by the head and
scored with NDCG@10 / Recall@10 against every held-out item (``two_stage_*``), next to the
retrieval order (``retrieval_*``). The top-N is found as mining finds it: exactly (then
``retrieval_*`` equals full-corpus retrieval at these cutoffs), or, past the ranking
config's ``ann_min_items``, through the ScaNN index, as serving finds it.
Each split keeps at most ``eval_users`` of its users (a seeded sample, the same every
epoch), so evaluation costs that many exact queries however many users the log has.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from twotower import metrics as metrics_lib
from twotower import ranking_metrics
from twotower.config import RankingConfig
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.data.itemsets import ItemSets
from twotower.data.keys import contains, pair_keys
from twotower.data.pipeline import FeatureGather
from twotower.data.vocab import PAD
from twotower.model.encoding import Encoder
from twotower.model.ranking import RankingModel
from twotower.training.ranking_mining import Search, exact_search, positive_labels, sample_rows

END_TO_END_KS = (10,)
IMPRESSION_KS = (5, 10)


def _subset_queries(queries: prepare_lib.EvalQueries, rows: np.ndarray):
  return prepare_lib.EvalQueries(queries.user[rows], queries.history[rows],
                                 queries.targets.subset(rows), queries.exclude.subset(rows))


@dataclasses.dataclass
class HeldOutSet:
  """One split's queries, their retrieval top-N, and impressions built from them."""
  name: str
  queries: prepare_lib.EvalQueries
  candidates: np.ndarray    # int64 [U, N] retrieval top-N (corpus indices), earlier items out
  targets: ItemSets         # positives per query row (corpus indices)
  rows: np.ndarray          # int64 [P] impression -> query row
  items: np.ndarray         # int64 [P] corpus indices
  labels: np.ndarray        # float32 [P]
  baseline: dict = dataclasses.field(default_factory=dict)   # the retrieval model's metrics


def held_out_set(data: prepare_lib.PreparedData, encoder: Encoder, corpus: np.ndarray,
                 split_code: int, config: RankingConfig, history_length: int,
                 seed: int, users: Optional[np.ndarray] = None,
                 search: Optional[Search] = None) -> HeldOutSet:
  """Impressions of one split: the held-out items (labelled) plus npratio negatives per
  positive drawn, without replacement, from the user's retrieval top-N minus held-out items.
  ``search`` finds the top-N (default: exact over ``corpus``)."""
  ev = data.events
  offset, num_items = data.item_vocab.offset, data.num_items
  queries = prepare_lib.eval_queries(data, split_code, history_length)
  if users is not None:   # only these users' queries
    queries = _subset_queries(queries, np.flatnonzero(np.isin(queries.user, users)))
  if 0 < config.eval_users < len(queries.user):
    queries = _subset_queries(queries, sample_rows(
        len(queries.user), config.eval_users, np.random.default_rng([seed, 2_000 + split_code])))
  num_users = len(queries.user)
  if num_users == 0:
    empty = np.zeros(0, np.int64)
    return HeldOutSet(splits.SPLIT_NAMES[split_code], queries,
                      np.zeros((0, config.num_candidates), np.int64),
                      ItemSets.from_lists([]), empty, empty, np.zeros(0, np.float32))
  query_embeddings = encoder.users(queries.user, queries.history)
  search = search or exact_search(corpus)
  candidates = search(query_embeddings, config.num_candidates, queries.exclude)
  # Held-out items per query row, positive if any of its events passes the threshold.
  idx = np.flatnonzero((ev.split == split_code) & np.isin(ev.user, queries.user))
  row = np.searchsorted(queries.user, ev.user[idx])
  item = ev.item[idx] - offset
  positive = positive_labels(data, idx, config.rating_threshold)
  key = pair_keys(row, item, num_items)
  order = np.lexsort((-positive, key))                  # per pair, the positive event first
  key, positive = key[order], positive[order]
  first = np.r_[True, key[1:] != key[:-1]]
  key, positive = key[first], positive[first]
  pair_row, pair_item = key // num_items, key % num_items
  # The end-to-end metrics count every held-out positive, reachable or not.
  targets = ItemSets.from_pairs(pair_row[positive > 0], pair_item[positive > 0], num_users)
  candidate_keys = np.sort(pair_keys(np.arange(num_users)[:, None], candidates,
                                      num_items)[candidates >= 0])
  if config.reachable_only:   # impressions: what the cascade would show the head
    reachable = contains(candidate_keys, key)
    pair_row, pair_item, positive = pair_row[reachable], pair_item[reachable], positive[reachable]
  # Negatives: candidates that are not held-out items of the row, npratio per positive.
  is_held = contains(key, pair_keys(np.arange(num_users)[:, None], candidates, num_items))
  rng = np.random.default_rng([seed, 1_000 + split_code])
  keys = rng.random(candidates.shape)
  keys[is_held | (candidates < 0)] = np.inf
  order = np.argsort(keys, axis=1)
  want = config.npratio * np.bincount(pair_row[positive > 0], minlength=num_users)
  available = np.isfinite(keys).sum(axis=1)
  take = np.minimum(want, available)
  width = min(int(take.max()), candidates.shape[1]) if num_users else 0
  pick = np.take_along_axis(candidates, order[:, :width], axis=1)
  keep = np.arange(width)[None, :] < take[:, None]
  neg_row = np.broadcast_to(np.arange(num_users)[:, None], pick.shape)[keep]
  neg_item = pick[keep]
  rows = np.concatenate([pair_row, neg_row])
  items = np.concatenate([pair_item, neg_item])
  labels = np.concatenate([positive, np.zeros(len(neg_item), np.float32)])
  order = np.lexsort((items, rows))
  held = HeldOutSet(splits.SPLIT_NAMES[split_code], queries, candidates, targets,
                    rows[order], items[order], labels[order])
  # What the head must beat: the towers' dot product on the same impressions (dot_*) and
  # the retrieval order of the same top-N (retrieval_*; exact search: full-corpus retrieval).
  dots = np.einsum("pd,pd->p", query_embeddings[held.rows], corpus[held.items])
  impressions = ranking_metrics.ranking_metrics(held.labels, dots, held.rows, ks=IMPRESSION_KS)
  held.baseline = {f"dot_{k}": v for k, v in impressions.items() if not k.startswith("num_")}
  for metric, value in top_k_metrics(candidates, targets, num_items).items():
    held.baseline[f"retrieval_{metric}"] = value
  return held


class Scorer:
  """Scores (user query, candidate items) with the ranking model, in fixed-size batches."""

  def __init__(self, model: RankingModel, data: prepare_lib.PreparedData,
               rows_per_batch: int = 8192):
    gather = FeatureGather(data)
    self._offset = data.item_vocab.offset
    self._rows = rows_per_batch
    self._fn = tf.function(
        lambda users, history, items: model(
            {"user": gather.user(users, history), "item_id": items}, training=False),
        reduce_retracing=True)

  def __call__(self, users: np.ndarray, history: np.ndarray,
               corpus_items: np.ndarray) -> np.ndarray:
    """Scores [B, N] of corpus indices [B, N] (-1 entries score -inf)."""
    ids = np.where(corpus_items >= 0, corpus_items + self._offset, PAD).astype(np.int32)
    out = np.empty(ids.shape, np.float32)
    step = max(1, self._rows // max(ids.shape[1], 1))
    for lo in range(0, len(ids), step):
      out[lo:lo + step] = self._fn(np.asarray(users[lo:lo + step], np.int32),
                                   np.asarray(history[lo:lo + step], np.int32),
                                   ids[lo:lo + step]).numpy()
    out[corpus_items < 0] = -np.inf
    return out


def top_k_metrics(ranked: np.ndarray, targets: ItemSets, num_items: int,
                  ks=END_TO_END_KS) -> dict:
  """NDCG@k and Recall@k (divided by min(k, |targets|)) of ranked corpus indices [U, N],
  over the rows with targets (the protocol of twotower.evaluate)."""
  sizes = targets.lengths()
  ok = sizes > 0
  if not ok.any():
    return {f"{metric}@{k}": 0.0 for k in ks for metric in ("ndcg", "recall")}
  keys = np.sort(targets.keys(num_items))
  hits = metrics_lib.hit_matrix(ranked, keys, num_items)[ok]
  out = {}
  for k, recall, ndcg, _ in metrics_lib.Cutoffs(ks, ranked.shape[1]).per_row(hits, sizes[ok]):
    out[f"ndcg@{k}"] = float(np.mean(ndcg))
    out[f"recall@{k}"] = float(np.mean(recall))
  return out


def held_out_metrics(scorer: Scorer, held: HeldOutSet, num_items: int) -> dict:
  """Impression metrics (AUC, gAUC, MRR, NDCG@5/10 per user) and the end-to-end re-rank."""
  q = held.queries
  if len(q.user) == 0:
    return {"num_users": 0}
  scores = scorer(q.user[held.rows], q.history[held.rows], held.items[:, None])[:, 0]
  out = ranking_metrics.ranking_metrics(held.labels, scores, held.rows, ks=IMPRESSION_KS)
  rerank_scores = scorer(q.user, q.history, held.candidates)
  # Stable: candidates the head ties keep their retrieval order.
  order = np.argsort(-rerank_scores, axis=1, kind="stable")
  reranked = np.take_along_axis(held.candidates, order, axis=1)
  for metric, value in top_k_metrics(reranked, held.targets, num_items).items():
    out[f"two_stage_{metric}"] = value
  out.update(held.baseline)
  out["num_users"] = int(np.sum(held.targets.lengths() > 0))
  return out
