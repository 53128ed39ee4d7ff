"""Training the ranking head on the retrieval model's candidates (``twotower-rank``).

Examples come from the trained retrieval model, so the head learns the decision it faces at
serving: which of the retrieved candidates the user actually takes. For every training
interaction the query (user + history strictly before it) retrieves its exact top-N over the
corpus with the user's training items excluded; the positive is joined by ``npratio``
negatives drawn afresh each epoch from those N (hard negatives), optionally mixed with
uniform corpus items. Only positives that the top-N would contain are kept
(``reachable_only``): the head never sees the others at serving, and keeping them pairs
low-scored positives with top-scored negatives, which teaches the head to distrust the
retrieval score (measured on MovieLens-100K: the re-ranked NDCG@10 fell below the retrieval
order's). ``examples=valid`` trains on validation interactions instead, which the retrieval
model never fitted, holding out a share of the validation users for early stopping.

Held-out impressions are built the same way from the validation or test split's queries
(one per user, history up to the split) and scored with AUC, gAUC, MRR and NDCG@5/10 per
user, next to the towers' dot product on the same impressions (``dot_*``). End to end, each
user's exact retrieval top-N (earlier items excluded) is re-ranked by the head and scored
with NDCG@10 / Recall@10 against every held-out item (``two_stage_*``), next to the
retrieval order (``retrieval_*``, which equals full-corpus retrieval at these cutoffs).

The loop mirrors twotower.train.loop: Progbar, TensorBoard, a checkpoint per epoch (rerun to
resume), early stopping and reduce-on-plateau on a validation metric, the divergence guard.
Everything lands in ``<workdir>/ranking/`` and under ``"ranking"`` in ``metrics.json``.
"""
from __future__ import annotations

import dataclasses
import os
import time
import types as pytypes
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from twotower import evaluate as evaluate_lib
from twotower import fileio
from twotower import ranking_metrics
from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.data.itemsets import ItemSets
from twotower.data.pipeline import FeatureGather
from twotower.data.vocab import PAD
from twotower.model.encoding import Encoder
from twotower.model.ranking import (RankingConfig, RankingModel, build_ranking_model,
                                    ranking_paths)
from twotower.train.loop import _LoopState, _early_stopping
from twotower.train.optimizers import make_optimizer
from twotower.train.stability import DivergenceError, DivergenceGuard
from twotower.workdir import TrainedRun, Workdir, load_trained

END_TO_END_KS = (10,)
IMPRESSION_KS = (5, 10)
MAX_RECOVERIES = 3


# -- candidates ---------------------------------------------------------------------------


def _top_n(queries: np.ndarray, corpus: np.ndarray, n: int, exclude: ItemSets) -> np.ndarray:
  """Exact top-n corpus indices [Q, n] (-1 where the corpus runs out), excluded items out."""
  top = evaluate_lib.top_k_items(queries, corpus, n, exclude)
  top = np.asarray(top[0] if isinstance(top, tuple) else top, np.int64)
  if top.shape[1] < n:   # a corpus smaller than n
    top = np.pad(top, ((0, 0), (0, n - top.shape[1])), constant_values=-1)
  return top


def _pair_keys(rows: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
  return np.asarray(rows, np.int64) * num_items + np.asarray(items, np.int64)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
  if len(sorted_keys) == 0:
    return np.zeros(keys.shape, bool)
  pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
  return sorted_keys[pos] == keys


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
                           chunk: int = 8192) -> TrainingExamples:
  """Retrieval top-N of every example interaction's query, the user's known items out.

  examples=train: every training interaction; known items are the user's training items.
  examples=valid: the validation interactions of users outside ``holdout_users``, which the
  retrieval model never trained on, so its scores there look as they will on new data;
  known items are the user's training and validation items.
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
  labels = np.ones(len(anchors), np.float32)
  if config.rating_threshold is not None:
    if ev.label is None:
      raise ValueError("--rating_threshold needs ratings, but the interactions have no "
                       "rating / label column")
    labels = (ev.label[anchors] >= config.rating_threshold).astype(np.float32)
    if config.loss == "softmax":   # a listwise example needs its positive
      anchors, labels = anchors[labels > 0], labels[labels > 0]
  if len(anchors) == 0:
    raise ValueError(f"no positive {config.examples} interactions to train the ranking "
                     f"head on")
  user_seen = ItemSets.from_pairs(ev.user[seen], ev.item[seen] - offset, len(data.user_vocab))
  known = np.unique(_pair_keys(ev.user[seen], ev.item[seen] - offset, num_items))
  candidates = np.empty((len(anchors), config.num_candidates), np.int64)
  reachable = np.ones(len(anchors), bool)
  for lo in range(0, len(anchors), chunk):
    idx = anchors[lo:lo + chunk]
    history = prepare_lib.gather_history(ev.item, ev.user_start[idx], ev.history_end[idx],
                                         history_length)
    queries = encoder.users(ev.user[idx], history)
    top = _top_n(queries, corpus, config.num_candidates, user_seen.subset(ev.user[idx]))
    candidates[lo:lo + len(idx)] = top
    # The positive (excluded as a known item) would make the top-N iff it outscores the
    # N-th candidate; a short list means the corpus ran out, so everything makes it.
    positive = np.einsum("qd,qd->q", queries, corpus[ev.item[idx] - offset])
    last = np.einsum("qd,qd->q", queries, corpus[np.maximum(top[:, -1], 0)])
    reachable[lo:lo + len(idx)] = (positive >= last) | (top[:, -1] < 0)
  if config.reachable_only:
    anchors, labels, candidates = anchors[reachable], labels[reachable], candidates[reachable]
  if len(anchors) == 0:
    raise ValueError("no example interaction is within its query's retrieval top-N; raise "
                     "--num_candidates or set --noreachable_only")
  return TrainingExamples(anchors.astype(np.int64), labels, candidates, known)


def _subset_queries(queries: prepare_lib.EvalQueries, rows: np.ndarray):
  return prepare_lib.EvalQueries(queries.user[rows], queries.history[rows],
                                 queries.targets.subset(rows), queries.exclude.subset(rows))


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
    bad = _contains(known, _pair_keys(users[r], draw, num_items))
    bad |= (out[r] == draw[:, None]).any(axis=1)
    # Two draws into the same row in one round may collide: keep the first.
    _, first = np.unique(_pair_keys(r, draw, num_items), return_index=True)
    repeat = np.ones(len(r), bool)
    repeat[first] = False
    good = ~(bad | repeat)
    out[r[good], c[good]] = draw[good]
  if (out < 0).any():
    raise ValueError("could not sample enough negatives: the catalogue is too small for "
                     f"--npratio={npratio}")
  return out


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
                 seed: int, users: Optional[np.ndarray] = None) -> HeldOutSet:
  """Impressions of one split: the held-out items (labelled) plus npratio negatives per
  positive drawn, without replacement, from the user's retrieval top-N minus held-out items."""
  ev = data.events
  offset, num_items = data.item_vocab.offset, data.num_items
  queries = prepare_lib.eval_queries(data, split_code, history_length)
  if users is not None:   # only these users' queries
    queries = _subset_queries(queries, np.flatnonzero(np.isin(queries.user, users)))
  num_users = len(queries.user)
  if num_users == 0:
    empty = np.zeros(0, np.int64)
    return HeldOutSet(splits.SPLIT_NAMES[split_code], queries,
                      np.zeros((0, config.num_candidates), np.int64),
                      ItemSets.from_lists([]), empty, empty, np.zeros(0, np.float32))
  query_embeddings = encoder.users(queries.user, queries.history)
  candidates = _top_n(query_embeddings, corpus, config.num_candidates, queries.exclude)
  # Held-out items per query row, positive if any of its events passes the threshold.
  idx = np.flatnonzero((ev.split == split_code) & np.isin(ev.user, queries.user))
  row = np.searchsorted(queries.user, ev.user[idx])
  item = ev.item[idx] - offset
  positive = np.ones(len(idx), np.float32)
  if config.rating_threshold is not None:
    positive = (ev.label[idx] >= config.rating_threshold).astype(np.float32)
  key = _pair_keys(row, item, num_items)
  order = np.lexsort((-positive, key))                  # per pair, the positive event first
  key, positive = key[order], positive[order]
  first = np.r_[True, key[1:] != key[:-1]]
  key, positive = key[first], positive[first]
  pair_row, pair_item = key // num_items, key % num_items
  # The end-to-end metrics count every held-out positive, reachable or not.
  targets = ItemSets.from_pairs(pair_row[positive > 0], pair_item[positive > 0], num_users)
  candidate_keys = np.sort(_pair_keys(np.arange(num_users)[:, None], candidates,
                                      num_items)[candidates >= 0])
  if config.reachable_only:   # impressions: what the cascade would show the head
    reachable = _contains(candidate_keys, key)
    pair_row, pair_item, positive = pair_row[reachable], pair_item[reachable], positive[reachable]
  # Negatives: candidates that are not held-out items of the row, npratio per positive.
  is_held = _contains(key, _pair_keys(np.arange(num_users)[:, None], candidates, num_items))
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
  # the retrieval order of the same top-N (retrieval_*, equal to full-corpus retrieval).
  dots = np.einsum("pd,pd->p", query_embeddings[held.rows], corpus[held.items])
  impressions = ranking_metrics.ranking_metrics(held.labels, dots, held.rows, ks=IMPRESSION_KS)
  held.baseline = {f"dot_{k}": v for k, v in impressions.items() if not k.startswith("num_")}
  for metric, value in top_k_metrics(candidates, targets, num_items).items():
    held.baseline[f"retrieval_{metric}"] = value
  return held


# -- scoring and metrics ------------------------------------------------------------------


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
  ranked, sizes = ranked[ok], sizes[ok]
  rows = np.flatnonzero(ok)
  keys = np.sort(_pair_keys(np.repeat(np.arange(targets.num_rows), targets.lengths()),
                            targets.indices, num_items))
  hits = _contains(keys, _pair_keys(rows[:, None], ranked, num_items)) & (ranked >= 0)
  out = {}
  for k in ks:
    h = hits[:, :k].astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, h.shape[1] + 2))
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[np.minimum(sizes, k) - 1]
    out[f"ndcg@{k}"] = float(np.mean((h * discount).sum(axis=1) / ideal)) if len(h) else 0.0
    out[f"recall@{k}"] = (float(np.mean(h.sum(axis=1) / np.minimum(sizes, k)))
                          if len(h) else 0.0)
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


# -- training -----------------------------------------------------------------------------


def ranking_dataset(data: prepare_lib.PreparedData, examples: TrainingExamples,
                    negatives: np.ndarray, *, batch_size: int, history_length: int,
                    seed: int, epoch: int, id_dropout: float,
                    skip_batches: int = 0) -> tf.data.Dataset:
  """One epoch of (user features, [positive, negatives] ids, labels) batches in an order
  that depends on (seed, epoch) only, so a resumed run sees the same batches."""
  ev = data.events
  offset = data.item_vocab.offset
  perm = np.random.default_rng([seed, epoch, 7]).permutation(len(examples.events))
  idx = examples.events[perm]
  items = np.concatenate([ev.item[idx][:, None].astype(np.int64),
                          negatives[perm] + offset], axis=1).astype(np.int32)
  labels = np.zeros(items.shape, np.float32)
  labels[:, 0] = examples.labels[perm]
  users_t, starts, ends = tf.constant(ev.user), tf.constant(ev.user_start), \
      tf.constant(ev.history_end)
  event_items = tf.constant(ev.item)
  gather = FeatureGather(data)
  num_oov = data.user_vocab.num_oov_buckets

  def make_batch(batch, step):
    event, item_ids, label = batch
    user_ids = tf.gather(users_t, event)
    if id_dropout > 0:
      # As in retrieval training: train the OOV row that unseen users get at serving.
      drop = tf.random.stateless_uniform(tf.shape(user_ids), [seed, step]) < id_dropout
      user_ids = tf.where(drop, tf.constant(1 + (num_oov - 1) // 2, user_ids.dtype), user_ids)
    history = pipeline.gather_history(event_items, tf.gather(starts, event),
                                      tf.gather(ends, event), history_length)
    return {"user": gather.user(user_ids, history), "item_id": item_ids, "label": label}

  steps = -(-len(idx) // batch_size)
  ds = tf.data.Dataset.from_tensor_slices((idx, items, labels)).batch(batch_size)
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps))
  ds = ds.skip(skip_batches)
  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


class RankingTrainer:
  """Owns the ranking head, its optimizer, checkpoints and log (cf. loop.Trainer)."""

  def __init__(self, run: TrainedRun, workdir: str, config: RankingConfig):
    self.run_, self.data, self.config = run, run.data, config
    self.wd, self.paths = Workdir(workdir), ranking_paths(workdir)
    self.history_length = run.config.data.history_length
    self.id_dropout = (config.id_dropout if config.id_dropout >= 0
                       else run.config.model.id_dropout)
    encoder = Encoder(run.model, run.data)
    corpus = encoder.items()
    started = time.time()
    self.examples = mine_training_examples(run.data, encoder, corpus, config,
                                           self.history_length)
    holdout = holdout_users(run.data, config) if config.examples == "valid" else None
    self.valid = held_out_set(run.data, encoder, corpus, splits.VALID, config,
                              self.history_length, config.seed, users=holdout)
    self.test = held_out_set(run.data, encoder, corpus, splits.TEST, config,
                             self.history_length, config.seed)
    logging.info("mined top-%d candidates for %d training interactions in %.1fs",
                 config.num_candidates, len(self.examples.events), time.time() - started)
    self.model = build_ranking_model(run, config)
    self.optimizer = make_optimizer(config.optimizer, config.learning_rate,
                                    config.global_clipnorm)
    self.model.compile(optimizer=self.optimizer)
    self.optimizer.build(self.model.trainable_variables)
    self.state = _LoopState()
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          state=self.state)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.paths["checkpoints"],
                                              max_to_keep=3)
    self.best_checkpoint = tf.train.Checkpoint(model=self.model)
    self.scorer = Scorer(self.model, self.data)
    self.train_step = tf.function(self.model.train_step, reduce_retracing=True)
    self.writer = tf.summary.create_file_writer(self.paths["tensorboard"])
    self.guard = DivergenceGuard()
    self.steps_per_epoch = -(-len(self.examples.events) // config.batch_size)
    self.log = self._load_log()

  def _load_log(self) -> dict:
    log = fileio.read_json(self.wd.metrics) if os.path.exists(self.wd.metrics) else {}
    entry = log.get("ranking") or {}
    return {"config": dataclasses.asdict(self.config),
            "examples": int(len(self.examples.events)),
            "epochs": entry.get("epochs", [])}

  def _write_log(self) -> None:
    """Merges this run's entry into metrics.json, leaving the retrieval entries alone."""
    log = fileio.read_json(self.wd.metrics) if os.path.exists(self.wd.metrics) else {}
    log["ranking"] = self.log
    fileio.atomic_write_json(self.wd.metrics, log)

  def restore_latest(self) -> bool:
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        return True
      except (tf.errors.OpError, ValueError, AssertionError) as e:
        logging.warning("ranking checkpoint %s is unreadable (%s); trying the previous one",
                        path, str(e).splitlines()[0])
    return False

  def save(self) -> None:
    self.manager.save(checkpoint_number=int(self.optimizer.iterations))
    self._write_log()

  def negatives(self, epoch: int) -> np.ndarray:
    ev = self.data.events
    rng = np.random.default_rng([self.config.seed, epoch, 11])
    return sample_negatives(self.examples.candidates, ev.user[self.examples.events],
                            self.examples.known, self.data.num_items, self.config.npratio,
                            self.config.random_negative_fraction, rng)

  def run(self) -> dict:
    c = self.config
    if self.restore_latest():
      self.log["epochs"] = [e for e in self.log["epochs"] if e["epoch"] < int(self.state.epoch)]
      logging.info("resumed ranking at epoch %d, batch %d", int(self.state.epoch),
                   int(self.state.batches_done))
    else:
      self.log["epochs"] = []
      self.save()
    while int(self.state.epoch) < c.epochs and not bool(self.state.stopped):
      self._epoch()
    return self._finish()

  def _epoch(self) -> None:
    c, epoch = self.config, int(self.state.epoch)
    progbar = tf_keras.utils.Progbar(self.steps_per_epoch, verbose=1 if c.progress else 0,
                                     stateful_metrics=["loss"])
    progbar.update(int(self.state.batches_done))
    negatives = self.negatives(epoch)
    started, losses, seen = time.time(), [], 0
    while int(self.state.batches_done) < self.steps_per_epoch:
      dataset = ranking_dataset(
          self.data, self.examples, negatives, batch_size=c.batch_size,
          history_length=self.history_length, seed=c.seed, epoch=epoch,
          id_dropout=self.id_dropout, skip_batches=int(self.state.batches_done))
      diverged = False
      for batch in dataset:
        out = self.train_step(batch)
        loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
        reason = self.guard.check(loss, grad_norm)
        if reason:
          self._recover(reason)
          diverged = True
          break
        self.state.batches_done.assign_add(1)
        losses.append(loss)
        seen += int(batch["item_id"].shape[0])
        step = int(self.optimizer.iterations)
        progbar.add(1, [("loss", float(np.mean(losses[-50:])))])
        if step % 10 == 0:
          with self.writer.as_default(step=step):
            tf.summary.scalar("ranking/train/loss", loss)
            tf.summary.scalar("ranking/train/grad_norm", grad_norm)
      if not diverged:
        break
    self._end_epoch(epoch, losses, seen, time.time() - started)

  def _recover(self, reason: str) -> None:
    """As in the retrieval loop: last good checkpoint, lower learning rate, skip the batch."""
    bad_epoch, bad_batch = int(self.state.epoch), int(self.state.batches_done)
    bad_step = int(self.optimizer.iterations)
    recoveries = int(self.state.recoveries) + 1
    if recoveries > MAX_RECOVERIES or not self.restore_latest():
      raise DivergenceError(f"ranking training diverged at step {bad_step} ({reason}); "
                            f"lower --learning_rate or set --global_clipnorm")
    lr = float(self.optimizer.learning_rate) * 0.5
    self.optimizer.learning_rate.assign(lr)
    self.state.epoch.assign(bad_epoch)
    self.state.batches_done.assign(bad_batch + 1)
    self.state.recoveries.assign(recoveries)
    self.guard.reset()
    self.log.setdefault("divergence_events", []).append(
        {"step": bad_step, "epoch": bad_epoch, "batch": bad_batch, "reason": reason,
         "learning_rate": lr})
    logging.warning("ranking divergence at step %d (%s): learning rate -> %g", bad_step,
                    reason, lr)
    self.save()

  def _end_epoch(self, epoch, losses, seen, elapsed) -> None:
    c = self.config
    valid = held_out_metrics(self.scorer, self.valid, self.data.num_items)
    record = {"epoch": epoch, "step": int(self.optimizer.iterations),
              "loss": float(np.mean(losses)) if losses else None,
              "examples_per_second": seen / max(elapsed, 1e-9),
              "learning_rate": float(self.optimizer.learning_rate),
              "dot_weight": float(self.model.dot_weight.numpy()), "valid": valid}
    if c.early_stopping_metric not in valid:
      raise ValueError(f"--early_stopping_metric must be one of "
                       f"{sorted(k for k in valid if k != 'num_users')}, got "
                       f"{c.early_stopping_metric!r}")
    _early_stopping(record, self.state, self.optimizer, self.best_checkpoint,
                    pytypes.SimpleNamespace(best=self.paths["best"]), c)
    self.log["epochs"].append(record)
    with self.writer.as_default(step=int(self.optimizer.iterations)):
      for name, value in valid.items():
        tf.summary.scalar(f"ranking/valid/{name}", value)
    if int(self.state.batches_done) >= self.steps_per_epoch:
      self.state.epoch.assign_add(1)
      self.state.batches_done.assign(0)
    self.save()
    logging.info("ranking epoch %d: loss %.4f, valid auc %.4f gauc %.4f ndcg@10 %.4f, "
                 "two-stage ndcg@10 %.4f (retrieval %.4f)", epoch, record["loss"] or np.nan,
                 valid.get("auc", np.nan), valid.get("gauc", np.nan),
                 valid.get("ndcg@10", np.nan), valid.get("two_stage_ndcg@10", np.nan),
                 valid.get("retrieval_ndcg@10", np.nan))

  def _finish(self) -> dict:
    if not os.path.exists(self.paths["best"] + ".index"):
      self.best_checkpoint.write(self.paths["best"])
    self.best_checkpoint.read(self.paths["best"]).expect_partial()
    self.log["final"] = {
        "best_epoch": int(self.state.best_epoch),
        "steps": int(self.optimizer.iterations),
        "valid": held_out_metrics(self.scorer, self.valid, self.data.num_items),
        "test": held_out_metrics(self.scorer, self.test, self.data.num_items),
    }
    self._write_log()
    self.writer.flush()
    return self.log


def train_ranking(workdir: str, **options) -> dict:
  """Trains (or resumes) the ranking head of a trained retrieval run; returns its log.

  ``options`` are RankingConfig fields (num_candidates, npratio, loss, rating_threshold,
  epochs...). Writes ``<workdir>/ranking/`` and the ``"ranking"`` entry of metrics.json.
  """
  config = RankingConfig.from_dict(options)
  config.validate()
  paths = ranking_paths(workdir)
  run = load_trained(workdir)
  os.makedirs(paths["root"], exist_ok=True)
  if os.path.exists(paths["config"]):
    saved = RankingConfig.load(paths["config"])
    if saved.to_json() != config.to_json():
      logging.warning("%s differs from these options; the new ones are used and saved",
                      paths["config"])
  fileio.atomic_write_bytes(paths["config"], config.to_json().encode())
  return RankingTrainer(run, workdir, config).run()
