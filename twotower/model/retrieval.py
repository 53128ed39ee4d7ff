"""The retrieval model: two towers trained with an in-batch + cross-batch sampled softmax.

``tfrs.tasks.Retrieval`` computes an in-batch softmax with logQ and accidental-hit removal,
but it cannot tell an empty queue slot from a real candidate, cannot mask items that the
row's own history shows to be positives, and never gathers candidates across replicas. So the
loss is written here, as a layer in the style of TFRS's task, while the model itself is a
``tfrs.Model``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from twotower import config as config_lib
from twotower.config import LossConfig
from twotower.data import types
from twotower.data.pipeline import HISTORY, FeatureGather
from twotower.data.vocab import PAD
from twotower.model.frequency import StaticFrequency, StreamingFrequencyEstimator
from twotower.model.guarded_step import guarded_step
from twotower.model.mixed_negatives import MixedNegativeSampler
from twotower.model.negatives import EMPTY_ID, CrossBatchQueue
from twotower.model.replicas import gather_replicas, replica_context
from twotower.model.towers import ItemTower, UserTower

# Logit of a masked candidate: exp() underflows to exactly 0 in float32 but stays finite.
MASKED_LOGIT = -1e9


def membership_mask(sets: tf.Tensor, candidate_ids: tf.Tensor) -> tf.Tensor:
  """[B, C] bool: whether candidate c's id is among row b's ``sets`` [B, K] (PAD never
  matches).

  Candidates repeat ids (popular items, and the queue holds each several times), so the
  (row, column) pairs can number many times B x K; scattering them into the [B, C] logits
  was the most expensive op of a CBNS step (profiled: more than the matmuls). Instead the
  B x K set ids are scattered into a table over the U distinct candidate ids, and one
  gather expands it to [B, C].
  """
  unique_ids, column_of = tf.unique(tf.cast(candidate_ids, sets.dtype))
  order = tf.argsort(unique_ids)
  sorted_ids = tf.gather(unique_ids, order)
  flat = tf.reshape(sets, [-1])
  position = tf.minimum(tf.searchsorted(sorted_ids, flat), tf.size(sorted_ids) - 1)
  found = tf.logical_and(tf.equal(tf.gather(sorted_ids, position), flat),
                         tf.not_equal(flat, PAD))
  rows = tf.repeat(tf.range(tf.shape(sets)[0]), tf.shape(sets)[1])
  hits = tf.stack([tf.boolean_mask(tf.gather(order, position), found),
                   tf.boolean_mask(rows, found)], axis=1)
  # Built transposed, [U, B]: gathering whole rows and transposing once is ~4x faster on
  # CPU than a gather along the inner axis (measured at B=512, U=1,682, C=4,608).
  table = tf.scatter_nd(hits, tf.ones(tf.shape(hits)[:1], tf.int32),
                        tf.stack([tf.size(unique_ids), tf.shape(sets)[0]]))
  return tf.transpose(tf.gather(table > 0, column_of))


def resolve_queue_size(config: LossConfig, batch_size: int, num_items: int,
                       encoder_items: bool = False) -> int:
  """The queue size a config asks for; -1 means automatic.

  Automatic is a queue only where encoding an item is expensive (``encoder_items``: the
  item tower runs a cnn or attention text encoder), as the CBNS paper assumes. With id and
  token towers the queue's products cost more than the towers: at 1M items and B=1,024 an
  automatic M=8,192 made the step 5.55x the in-batch one, and on the 200k-item peaked corpus
  a true 8x batch, at half CBNS's cost per example, came within 1.3% of its recall at equal
  examples (experiments/RESULTS.md); there a larger --batch_size buys more per second.

  With an encoder: 8 batches, capped at an eighth of the catalogue, and no queue when that
  cap is below one batch. A queue near the catalogue size holds every item, each user's
  future positives among them, as negatives; on MovieLens-100K (1,682 items, B=512) a queue
  of 841 costs test Recall@20 (0.241 vs 0.256 in-batch), so small catalogues train in-batch.
  """
  if config.queue_size >= 0:
    return config.queue_size
  if not encoder_items:
    return 0
  size = min(8 * batch_size, num_items // 8)
  return int(size) if size >= batch_size else 0


def resolve_query_memory_size(config: LossConfig, queue_size: int) -> int:
  """The query memory size a config asks for; -1 means the queue's size.

  Without an item queue the memory is refused: items would then meet B + M users while each
  user meets only B items, and training degrades (experiments/RESULTS.md).
  """
  if config.query_memory_size < 0:
    return queue_size
  if config.query_memory_size and not queue_size:
    raise ValueError(f"--query_memory_size={config.query_memory_size} needs the item queue, "
                     f"which is off (--queue_size={config.queue_size})")
  return config.query_memory_size


class CrossBatchSoftmax(tf_keras.layers.Layer):
  """Softmax over [in-batch candidates ; queue ; mixed negatives] / temperature - log q,
  with masks.

  Row b's positive is candidate b. Masked (never a negative of row b): candidates whose id
  equals row b's positive (accidental hits, queue and mixed negatives included), empty queue
  slots, every queue slot during warm-up, and candidates among row b's history items (known
  positives).

  With a query memory, the batch's candidates also join the softmaxes of recent rows
  (``memory_loss``), so that both towers see the gradient of a batch B + M large. Neither
  TFRS nor the CBNS paper has this: their queue gives only the user tower more negatives,
  and measured on our corpora that alone loses to in-batch training (experiments/RESULTS.md).
  """

  def __init__(self, config: LossConfig, queue: Optional[CrossBatchQueue] = None,
               query_memory: Optional[CrossBatchQueue] = None, **kwargs):
    super().__init__(**kwargs)
    if config.temperature <= 0:
      raise ValueError(f"--temperature must be positive, got {config.temperature}")
    self._config = config
    self.queue = queue
    # (query embedding, positive item id, log-partition of its softmax) of recent rows:
    # the queue's fields hold those three. See memory_loss().
    self.query_memory = query_memory
    # Off until the training loop sees the embedding drift fall below
    # --queue_warmup_drift (train/drift.py); always on without that flag. Checkpointed.
    self.queue_enabled = tf.Variable(config.queue_warmup_drift <= 0, trainable=False,
                                     name="queue_enabled")

  def center(self, candidates: tf.Tensor) -> tf.Tensor:
    """Candidates minus the batch mean, when a queue is used and centering is on.

    Tower outputs share a large common component, and the optimizer keeps moving it. Queue
    entries carry the component of the step that wrote them, so without centering the model
    can tell stale negatives from fresh candidates by that drift alone: users align with the
    moving component and the embeddings collapse (measured on MovieLens-100K: valid
    Recall@20 falls from 0.29 to 0.09). Subtracting the batch mean adds the same constant
    -q.mean to every in-batch logit of a row, which the softmax ignores, and removes the
    shared drift from every queue entry.
    """
    if self.queue is None or not self._config.queue_centering:
      return candidates
    return candidates - tf.reduce_mean(candidates, axis=0, keepdims=True)

  def _warm(self, step) -> tf.Tensor:
    """Whether the cross-batch memories are used at this step (warm-up, drift switch)."""
    warm = tf.constant(True) if step is None else step >= self._config.queue_warmup_steps
    return tf.logical_and(warm, self.queue_enabled)

  def logits(self, query, candidates, candidate_ids, candidate_log_q, history=None,
             step=None, label_offset=0, negatives=None, use_queue=True):
    """Masked, corrected logits [B, C + M + B']; row b's label is column b + label_offset.

    ``candidates`` may be the global batch of several replicas (C = replicas x B); then row
    b of this replica is global row label_offset + b. ``negatives`` is (embeddings, ids,
    log q) of B' mixed negatives, or None.
    """
    cfg = self._config
    all_ids = candidate_ids
    blocks = [(candidates, candidate_log_q if cfg.logq else tf.zeros_like(candidate_log_q))]
    if self.queue is not None and use_queue:
      all_ids = tf.concat([candidate_ids, self.queue.ids], axis=0)
      queue_ok = tf.logical_and(tf.not_equal(self.queue.ids, EMPTY_ID), self._warm(step))
      # Empty or still-warming slots get a huge bias: exp() of their logit is exactly 0.
      queue_bias = tf.where(queue_ok, self.queue.log_q if cfg.logq else 0.0, -MASKED_LOGIT)
      blocks.append((self.queue.embeddings, queue_bias))
    if negatives is not None:
      negative_embeddings, negative_ids, negative_log_q = negatives
      all_ids = tf.concat([all_ids, tf.cast(negative_ids, all_ids.dtype)], axis=0)
      blocks.append((negative_embeddings,
                     negative_log_q if cfg.logq else tf.zeros_like(negative_log_q)))
    # The [B, B + M] logits are the costly tensor on small towers (experiments/RESULTS.md),
    # so every per-candidate term rides in the matmul instead of passing over them: the
    # temperature scales the [B, D] query, and the bias (log q, slot masks) is an extra
    # column against a constant -1 in the query. The queue block gets its own matmul so that
    # no gradient is computed for the (stop-gradient) queue entries.
    query = tf.concat([query * (1.0 / cfg.temperature), -tf.ones_like(query[:, :1])], axis=1)
    scored = [tf.matmul(query, tf.concat([emb, bias[:, None]], axis=1), transpose_b=True)
              for emb, bias in blocks]
    logits = scored[0] if len(scored) == 1 else tf.concat(scored, axis=1)

    batch = tf.shape(query)[0]
    labels = tf.range(batch) + label_offset
    positive_ids = tf.gather(candidate_ids, labels)
    known = []   # per row: ids that are positives, never negatives
    if cfg.mask_accidental_hits:
      known.append(positive_ids[:, None])
    if cfg.mask_history and history is not None:
      known.append(tf.cast(history, positive_ids.dtype))
    if known:
      mask = membership_mask(tf.concat(known, axis=1), all_ids)
      # The label column itself stays: it is the row's positive, not a negative.
      mask = tf.logical_and(mask, tf.not_equal(tf.range(tf.shape(mask)[1])[None, :],
                                               labels[:, None]))
      logits = tf.where(mask, tf.constant(MASKED_LOGIT, logits.dtype), logits)
    return logits

  def memory_loss(self, candidates, candidate_ids, candidate_log_q, step=None) -> tf.Tensor:
    """Sum over the remembered queries u of log(1 + sum_c exp(l_uc) / Z_u).

    The batch's candidates join the softmax of each query of the last rows, whose
    log-partition log Z_u over its own candidates was stored with it: an item is then a
    negative of B + M_u users, as in a batch B + M_u large, and not of B alone. Only the
    candidates get gradient (the memory is stop-gradient); a remembered query's positive is
    never its negative here. Its history items are not remembered, so unlike in-batch rows
    they are not masked.
    """
    memory, cfg = self.query_memory, self._config
    assert memory is not None, "memory_loss needs a query memory"
    bias = candidate_log_q if cfg.logq else tf.zeros_like(candidate_log_q)
    logits = tf.matmul(memory.embeddings * (1.0 / cfg.temperature), candidates,
                       transpose_b=True) - bias[None, :]
    hit = tf.equal(memory.ids[:, None], tf.cast(candidate_ids, memory.ids.dtype)[None, :])
    logits = tf.where(hit, tf.constant(MASKED_LOGIT, logits.dtype), logits)
    extended = tf.reduce_logsumexp(tf.concat([memory.log_q[:, None], logits], 1), axis=1)
    used = tf.logical_and(tf.not_equal(memory.ids, EMPTY_ID), self._warm(step))
    return tf.reduce_sum(tf.where(used, extended - memory.log_q, 0.0))

  def call(self, query, candidates, candidate_ids, candidate_log_q, history=None, step=None,
           label_offset=0, global_batch_size=None, negatives=None,
           return_log_partition=False):
    """Mean loss over the rows; with ``global_batch_size`` (several replicas), this
    replica's share of the global mean, so that summing over replicas gives the mean.
    With ``return_log_partition``, also each row's log-partition (for the query memory)."""
    labels = tf.range(tf.shape(query)[0]) + label_offset

    def losses_of(query, candidates, negatives, use_queue=True):
      logits = self.logits(query, candidates, candidate_ids, candidate_log_q, history, step,
                           label_offset, negatives, use_queue)
      return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), logits

    if self.queue is None or not self._config.queue_decoupled:
      losses, logits = losses_of(query, candidates, negatives)
    else:
      frozen = None if negatives is None else (tf.stop_gradient(negatives[0]),) + negatives[1:]
      losses, logits = losses_of(query, tf.stop_gradient(candidates), frozen)
      losses += losses_of(tf.stop_gradient(query), candidates, negatives, use_queue=False)[0]
    total = tf.reduce_sum(losses)
    rows = tf.cast(tf.shape(query)[0] if global_batch_size is None else global_batch_size,
                   losses.dtype)
    if self.query_memory is not None:
      # Every replica adds the same memory term over the global candidates: a share each.
      ctx = replica_context()
      total += self.memory_loss(candidates, candidate_ids, candidate_log_q, step) / (
          1.0 if ctx is None else float(ctx.num_replicas_in_sync))
    loss = total / rows
    if not return_log_partition:
      return loss
    return loss, tf.stop_gradient(tf.reduce_logsumexp(logits, axis=1))


def encode_each_item_once(item_tower, features: dict, training: bool) -> tf.Tensor:
  """[B, D] item embeddings with each distinct item of the batch through the tower once.

  SpeedyFeed's centralized encoding: a batch repeats its popular items (on MovieLens-100K
  a 512-row batch holds about 400 distinct ones), and an item's features are the same rows
  wherever it occurs, so its first occurrence is encoded and the result gathered back; the
  gradient of the gather sums the occurrences, as encoding every row would. TFRS encodes
  every row.
  """
  ids = features["item_id"]
  distinct, position = tf.unique(ids)
  first = tf.math.unsorted_segment_min(tf.range(tf.shape(ids)[0]), position,
                                       tf.shape(distinct)[0])
  encoded = item_tower({name: tf.gather(value, first) for name, value in features.items()},
                       training=training)
  return tf.gather(encoded, position)


class TwoTowerModel(tfrs.Model):
  """User tower + item tower + CrossBatchSoftmax; the queue is filled after each step.

  With a ``mixed`` sampler, B' corpus items per step (features gathered by ``item_features``)
  are encoded with the batch and join the softmax as negatives.
  """

  def __init__(self, user_tower, item_tower, task: CrossBatchSoftmax, frequency,
               mixed: Optional[MixedNegativeSampler] = None,
               item_features: Optional[FeatureGather] = None):
    super().__init__()
    self.user_tower = user_tower
    self.item_tower = item_tower
    self.task = task
    self.frequency = frequency
    self.mixed = mixed
    self._item_features = item_features

  def _forward(self, features, training):
    """Loss of this replica's rows against the global batch (+ queue), and the global
    candidates to enqueue."""
    query = self.user_tower(features["user"], training=training)
    local = encode_each_item_once(self.item_tower, features["item"], training)
    ctx = replica_context()
    candidates = gather_replicas(local)
    ids = gather_replicas(features["item"]["item_id"])
    step = self.optimizer.iterations if self.optimizer is not None else None
    negatives = None
    if self.mixed is None:
      candidates = self.task.center(candidates)
      log_q = self.frequency.log_q(ids)
    else:
      # The same B' items on every replica (seeded by the step), not gathered.
      negative_ids = self.mixed.sample(step if step is not None else 0)
      encoded = self.item_tower(self._item_features.item(negative_ids), training=training)
      # One common shift for both: the softmax ignores it, the queue needs it (center()).
      num = tf.shape(ids)[0]
      both = self.task.center(tf.concat([candidates, encoded], axis=0))
      candidates, encoded = both[:num], both[num:]
      # Stream-drawn candidates per step: the batch and the queue's M entries, so an item's
      # expected stream occurrences are (C + M) / C times its rate in a batch of C.
      queue_size = self.task.queue.size if self.task.queue is not None else 0
      scale = tf.math.log(tf.cast(num + queue_size, tf.float32) / tf.cast(num, tf.float32))

      def log_q_of(item_ids):
        return self.mixed.mixture_log_q(self.frequency.log_rate(item_ids, num) + scale,
                                        item_ids)
      log_q = log_q_of(ids)
      negatives = (encoded, negative_ids, log_q_of(negative_ids))
    if ctx is None:
      offset, global_batch = 0, None
    else:
      # tf.distribute splits a batch that does not divide evenly (33 -> 17 + 16), so this
      # replica's first global row is the sum of the earlier replicas' sizes.
      sizes = gather_replicas(tf.shape(local)[:1])
      offset = tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
      global_batch = tf.shape(ids)[0]
    # Only the query memory needs the rows' log-partitions (and their cross-replica gathers).
    remember = self.task.query_memory is not None
    out = self.task(query, candidates, ids, log_q, history=features["user"].get(HISTORY),
                    step=step, label_offset=offset, global_batch_size=global_batch,
                    negatives=negatives, return_log_partition=remember)
    loss, log_partition = out if remember else (out, None)
    entries = {"queue": (candidates, ids, log_q)}
    if remember:
      entries["query_memory"] = (gather_replicas(query), ids, gather_replicas(log_partition))
    return loss, entries

  def compute_loss(self, features, training=False):
    return self._forward(features, training)[0]

  def train_step(self, features):
    """One step; a step whose loss or gradients are not finite changes nothing (the loop's
    divergence guard sees it in the returned values and reacts)."""
    # Yi et al.: the estimator sees the (global) batch before its probabilities are read.
    self.frequency.update(gather_replicas(features["item"]["item_id"]))
    enqueued = {}

    def loss_fn():
      loss, enqueued["entries"] = self._forward(features, training=True)
      return loss

    def enqueue():
      for name, entries in enqueued["entries"].items():
        if getattr(self.task, name) is not None:
          getattr(self.task, name).enqueue(*entries)

    return guarded_step(self, loss_fn, enqueue)


def build_retrieval_model(data, config) -> TwoTowerModel:
  """Towers, queue and loss for a prepared dataset and a twotower.config.Config."""
  counts = np.zeros(len(data.item_vocab), np.int64)
  counts[data.item_vocab.offset:] = data.train_item_counts()
  item_tower = ItemTower(len(data.item_vocab), data.item_features.specs, config.model,
                         id_dropout=config_lib.item_id_dropout(config), train_counts=counts,
                         seed=config.train.seed)
  user_tower = UserTower(len(data.user_vocab), data.user_features.specs, config.model,
                         item_tower.id_embedding)
  queue_size = resolve_queue_size(config.loss, config.train.batch_size, data.num_items,
                                  encodes_text(data.item_features.specs, config.model))
  queue = CrossBatchQueue(queue_size, config.model.embedding_dim) if queue_size else None
  memory_size = resolve_query_memory_size(config.loss, queue_size)
  query_memory = (CrossBatchQueue(memory_size, config.model.embedding_dim, name="query_memory")
                  if memory_size else None)
  task = CrossBatchSoftmax(config.loss, queue, query_memory)
  frequency = build_frequency(data, config.loss)
  if not config.loss.mixed_negatives:
    return TwoTowerModel(user_tower, item_tower, task, frequency)
  mixed = MixedNegativeSampler(config.loss.mixed_negatives,
                               config.loss.mixed_negatives_distribution, data.corpus_ids(),
                               data.train_item_counts(), len(data.item_vocab),
                               seed=config.train.seed)
  return TwoTowerModel(user_tower, item_tower, task, frequency, mixed, FeatureGather(data))


def encodes_text(specs, config) -> bool:
  """Whether a tower with these feature specs runs an order-aware text encoder (the
  expensive kind, for which the automatic queue is on)."""
  return config.text_encoder != "mean" and any(s.kind == types.TEXT for s in specs)


def build_frequency(data, config: LossConfig):
  """The log q source the config names."""
  if config.frequency == "static":
    counts = np.zeros(len(data.item_vocab), np.int64)
    counts[data.item_vocab.offset:] = data.train_item_counts()
    return StaticFrequency(counts)
  if config.frequency == "streaming":
    return StreamingFrequencyEstimator(config.frequency_buckets or len(data.item_vocab),
                                       config.frequency_hashes, config.frequency_learning_rate)
  raise ValueError(f"--frequency must be 'static' or 'streaming', got {config.frequency!r}")
