"""The ranking head: re-scores a user's retrieved candidates with features a dot product lacks.

Second stage of the YouTube DNN / Wide & Deep lineage. The towers must score the whole
corpus with one dot product, so they cannot express interactions between a user feature and
an item feature (region x price, say) or between the candidate and individual history items.
For the few hundred retrieved candidates a heavier model is affordable: its input is the
user's and the item's own id / feature embeddings, the frozen tower embeddings, their dot
product and the candidate's similarity to each history item; DCN-v2 cross layers
(``tfrs.layers.dcn.Cross``) make explicit feature crosses, an MLP follows. The output is
``mlp(...) + w * dot`` with w initialised to the retrieval softmax's 1 / temperature, so an
untrained head already reproduces the retrieval order and training learns the correction.

Also here: the raw-string SavedModel export (``export_ranking_model``) and its serving
adapter (``SavedModelReranker``), which needs nothing but TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from twotower.data import types
from twotower.data.features import SEPARATORS, FeatureSpec
from twotower.data.pipeline import HISTORY
from twotower.data.vocab import PAD, Vocabulary
from twotower.model.towers import FeatureEmbeddings, masked_mean
from twotower.train.stability import guarded_step

LOSSES = ("softmax", "bce")
EXAMPLES = ("train", "valid")
RECENT = 3   # history positions that count as "recent" for the similarity features
SAVED_MODEL_DIR = "ranking_model"


@dataclasses.dataclass
class RankingConfig:
  """Options of the ranking job, saved as ``<workdir>/ranking/config.json``."""
  # Candidates and examples.
  examples: str = "train"              # train | valid: which split's interactions are examples
  holdout_fraction: float = 0.3        # examples=valid: validation users kept for early stop
  num_candidates: int = 100            # retrieval top-N: mined for negatives, re-ranked
  npratio: int = 4                     # negatives per positive
  reachable_only: bool = True          # only positives the retrieval top-N contains
  random_negative_fraction: float = 0.0   # share of the negatives drawn from the whole corpus
  loss: str = "bce"                    # bce: pointwise; softmax: listwise over 1 + npratio
  rating_threshold: Optional[float] = None   # label >= threshold is positive (ratings only)
  # Architecture.
  embedding_dim: int = 32
  cross_layers: int = 2
  cross_projection_dim: int = 64       # low-rank DCN-v2 cross; 0: full rank
  layers: Sequence[int] = (256, 128)
  dropout: float = 0.1
  history_similarity: bool = True      # candidate . history items: max, mean, recent
  history_attention: bool = True       # DIN-style candidate-specific pooling of the history
  id_embeddings: bool = True           # the head's own user and candidate id embeddings
  popularity: bool = True              # log training count of the candidate (see below)
  residual_dot: bool = True            # add w * tower dot product, w init 1 / temperature
  # Training.
  batch_size: int = 256
  epochs: int = 10
  learning_rate: float = 0.001
  optimizer: str = "adam"
  global_clipnorm: float = 0.0
  early_stopping_metric: str = "two_stage_ndcg@10"
  patience: int = 3
  lr_plateau_patience: int = 2
  lr_plateau_factor: float = 0.5
  id_dropout: float = -1.0             # -1: the retrieval run's id_dropout
  seed: int = 0
  progress: bool = True

  def validate(self) -> None:
    checks = [
        (self.num_candidates > 0, f"--num_candidates must be positive, got {self.num_candidates}"),
        (self.npratio > 0, f"--npratio must be positive, got {self.npratio}"),
        (self.npratio < self.num_candidates,
         f"--npratio ({self.npratio}) must be below --num_candidates ({self.num_candidates})"),
        (0.0 <= self.random_negative_fraction <= 1.0,
         f"--random_negative_fraction must be in [0, 1], got {self.random_negative_fraction}"),
        (self.examples in EXAMPLES,
         f"--examples must be one of {EXAMPLES}, got {self.examples!r}"),
        (0.0 < self.holdout_fraction < 1.0,
         f"--holdout_fraction must be in (0, 1), got {self.holdout_fraction}"),
        (self.loss in LOSSES, f"--loss must be one of {LOSSES}, got {self.loss!r}"),
        (self.embedding_dim > 0, f"--embedding_dim must be positive, got {self.embedding_dim}"),
        (self.cross_layers >= 0, f"--cross_layers must be >= 0, got {self.cross_layers}"),
        (self.cross_projection_dim >= 0,
         f"--cross_projection_dim must be >= 0, got {self.cross_projection_dim}"),
        (self.batch_size > 0, f"--batch_size must be positive, got {self.batch_size}"),
        (self.epochs > 0, f"--epochs must be positive, got {self.epochs}"),
        (self.id_dropout < 1, f"--id_dropout must be below 1, got {self.id_dropout}"),
        (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "RankingConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
      raise ValueError(f"unknown ranking options: {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

  @classmethod
  def load(cls, path: str) -> "RankingConfig":
    with open(path) as f:
      return cls.from_dict(json.load(f))


def _scoring_mlp(layer_sizes: Sequence[int], dropout: float) -> tf_keras.Sequential:
  """ReLU layers and a zero-initialised output: the untrained head adds exactly 0 to the
  retrieval logit, so training starts from the retrieval order instead of from noise."""
  layers = []
  for i, units in enumerate(layer_sizes):
    layers.append(tf_keras.layers.Dense(units, activation="relu", name=f"rank_dense{i}"))
    if dropout > 0:
      layers.append(tf_keras.layers.Dropout(dropout))
  layers.append(tf_keras.layers.Dense(1, kernel_initializer="zeros", name="rank_output"))
  return tf_keras.Sequential(layers, name="rank_mlp")


class RankingModel(tfrs.Model):
  """Scores [B, N] candidates of B users; trained with ``tfrs.tasks.Ranking``.

  Inputs: ``{"user": <the user tower's feature dict>, "item_id": int [B, N]}``. Item side
  features and the frozen item embeddings are gathered from tables the model owns, so the
  same call serves training (ids from the pipeline) and export (ids from StringLookup).
  """

  def __init__(self, *, user_tower: tf_keras.Model, item_embeddings: np.ndarray,
               item_feature_values: dict, user_specs: Sequence[FeatureSpec],
               item_specs: Sequence[FeatureSpec], num_user_ids: int, num_item_ids: int,
               config: RankingConfig, retrieval_temperature: float = 1.0,
               item_counts: Optional[np.ndarray] = None):
    super().__init__()
    self.config = config
    # Frozen: the ranking head learns on top of the retrieval model, never changes it.
    self.user_tower = user_tower
    self.user_tower.trainable = False
    self.item_embeddings = tf.Variable(np.asarray(item_embeddings, np.float32),
                                       trainable=False, name="frozen_item_embeddings")
    self._item_tables = {k: tf.constant(v) for k, v in item_feature_values.items()}
    # Standardised log(1 + training count) per item id. The logQ-corrected towers score
    # popularity out of the dot product on purpose; the head may put back what predicts.
    counts = np.zeros(num_item_ids) if item_counts is None else np.asarray(item_counts, float)
    log_counts = np.log1p(counts)
    log_counts = (log_counts - log_counts.mean()) / max(float(log_counts.std()), 1e-6)
    self.item_popularity = tf.Variable(log_counts.astype(np.float32)[:, None],
                                       trainable=False, name="item_log_popularity")
    d = config.embedding_dim
    self.user_id_embedding = tf_keras.layers.Embedding(num_user_ids, d, name="rank_user_id")
    self.item_id_embedding = tf_keras.layers.Embedding(num_item_ids, d, name="rank_item_id")
    self.user_features = FeatureEmbeddings(user_specs, d, name="rank_user_features")
    if config.history_attention:
      self.attention = tf_keras.Sequential(
          [tf_keras.layers.Dense(32, activation="relu", name="attention_hidden"),
           tf_keras.layers.Dense(1, name="attention_logit")], name="history_attention")
    self.item_features = FeatureEmbeddings(item_specs, d, name="rank_item_features")
    self.crosses = [
        tfrs.layers.dcn.Cross(projection_dim=config.cross_projection_dim or None,
                              kernel_initializer="glorot_uniform", name=f"cross{i}")
        for i in range(config.cross_layers)]
    self.mlp = _scoring_mlp(config.layers, config.dropout)
    self.dot_weight = tf.Variable(
        1.0 / retrieval_temperature if config.residual_dot else 0.0,
        trainable=config.residual_dot, dtype=tf.float32, name="dot_weight")
    if config.loss == "softmax":
      # Listwise (NRMS): the positive competes with its 1 + npratio list.
      loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
      loss = tf_keras.losses.BinaryCrossentropy(from_logits=True)
    self.task = tfrs.tasks.Ranking(loss=loss)

  def call(self, features: dict, training=False) -> tf.Tensor:
    user, item_ids = features["user"], features["item_id"]
    batch, n = tf.shape(item_ids)[0], tf.shape(item_ids)[1]
    flat = tf.reshape(item_ids, [-1])
    history = user[HISTORY]

    user_frozen = tf.stop_gradient(self.user_tower(user, training=False))      # [B, D]
    item_frozen = tf.gather(self.item_embeddings, flat)                         # [BN, D]
    user_frozen_rep = tf.repeat(user_frozen, n, axis=0)
    dot = tf.reduce_sum(user_frozen_rep * item_frozen, axis=-1, keepdims=True)

    history_emb = self.item_id_embedding(history)                               # [B, L, d]
    user_parts = self.user_features(user) + [masked_mean(history_emb, history)]
    item_dict = {"item_id": flat}
    item_dict.update({k: tf.gather(t, flat) for k, t in self._item_tables.items()})
    item_id_emb = self.item_id_embedding(flat)
    item_parts = self.item_features(item_dict)
    if self.config.id_embeddings:
      user_parts.append(self.user_id_embedding(user["user_id"]))
      item_parts.append(item_id_emb)
    parts = [tf.repeat(tf.concat(user_parts, -1), n, axis=0), user_frozen_rep, item_frozen,
             user_frozen_rep * item_frozen, dot]
    if item_parts:
      parts.append(tf.concat(item_parts, -1))
    if self.config.popularity:
      parts.append(tf.gather(self.item_popularity, flat))
    if self.config.history_similarity:
      parts += self._history_similarity(item_frozen, history, batch, n)
    if self.config.history_attention:
      parts.append(self._attend(item_id_emb, history_emb, history, batch, n))
    x0 = tf.concat(parts, axis=-1)
    x = x0
    for cross in self.crosses:
      x = cross(x0, x)
    logit = self.mlp(x, training=training)[:, 0] + self.dot_weight * dot[:, 0]
    return tf.reshape(logit, [batch, n])

  def _history_similarity(self, item_frozen, history, batch, n) -> list[tf.Tensor]:
    """Candidate . history item in the frozen item space (max, mean, the latest item, the
    RECENT latest): item-to-item evidence that the user embedding averages away."""
    history_emb = tf.gather(self.item_embeddings, history)                     # [B, L, D]
    candidates = tf.reshape(item_frozen, [batch, n, -1])
    sims = tf.einsum("bnd,bld->bnl", candidates, history_emb)
    valid = tf.not_equal(history, PAD)[:, None, :]
    count = tf.reduce_sum(tf.cast(valid, sims.dtype), axis=-1)
    has_history = count > 0
    max_sim = tf.where(has_history,
                       tf.reduce_max(tf.where(valid, sims, -1e9), axis=-1), 0.0)
    masked = tf.where(valid, sims, 0.0)
    mean_sim = tf.reduce_sum(masked, axis=-1) / tf.maximum(count, 1.0)
    # The history is right-aligned, most recent last: the latest items carry the session.
    recent = tf.reduce_sum(masked[:, :, -RECENT:], axis=-1) / tf.maximum(
        tf.reduce_sum(tf.cast(valid[:, :, -RECENT:], sims.dtype), axis=-1), 1.0)
    return [tf.reshape(f, [-1, 1]) for f in (max_sim, mean_sim, masked[:, :, -1], recent)]

  def _attend(self, item_id_emb, history_emb, history, batch, n) -> tf.Tensor:
    """DIN (Zhou et al. 2018): the history pooled with weights that depend on the
    candidate, so one user can look different to different candidates."""
    length, dim = tf.shape(history)[1], tf.shape(history_emb)[-1]
    c = tf.broadcast_to(tf.reshape(item_id_emb, [batch, n, 1, dim]), [batch, n, length, dim])
    h = tf.broadcast_to(history_emb[:, None], [batch, n, length, dim])
    logits = self.attention(tf.concat([c, h, c * h, c - h], axis=-1))[..., 0]   # [B, N, L]
    valid = tf.not_equal(history, PAD)[:, None, :]
    weights = tf.where(valid, tf.nn.softmax(tf.where(valid, logits, -1e9), axis=-1), 0.0)
    pooled = tf.einsum("bnl,bld->bnd", weights, history_emb)
    return tf.reshape(pooled, [-1, dim])

  def compute_loss(self, features, training=False) -> tf.Tensor:
    scores = self(features, training=training)
    return self.task(labels=features["label"], predictions=scores, training=training,
                     compute_metrics=False)

  def train_step(self, features):
    """One step; non-finite loss or gradients change nothing (the loop's guard reacts)."""
    return guarded_step(self, lambda: self.compute_loss(features, training=True))


def build_ranking_model(run, config: RankingConfig) -> RankingModel:
  """A ranking head on top of a ``workdir.TrainedRun``'s frozen towers, variables built."""
  from twotower.model.encoding import Encoder
  data = run.data
  tf_keras.utils.set_random_seed(config.seed)
  # Every item id, padding and OOV rows included: the table is indexed by vocabulary id.
  item_embeddings = Encoder(run.model, data).items(np.arange(len(data.item_vocab)))
  counts = np.zeros(len(data.item_vocab), np.int64)
  counts[data.item_vocab.offset:] = data.train_item_counts()
  model = RankingModel(
      user_tower=run.model.user_tower, item_embeddings=item_embeddings,
      item_feature_values=data.item_features.values, user_specs=data.user_features.specs,
      item_specs=data.item_features.specs, num_user_ids=len(data.user_vocab),
      num_item_ids=len(data.item_vocab), config=config,
      retrieval_temperature=run.config.loss.temperature, item_counts=counts)
  model(_dummy_inputs(data, run.config.data.history_length))
  return model


def _dummy_inputs(data, history_length: int) -> dict:
  user = {"user_id": tf.zeros([1], tf.int32),
          HISTORY: tf.zeros([1, history_length], tf.int32)}
  for name, table in data.user_features.values.items():
    user[name] = tf.zeros((1,) + table.shape[1:], tf.int32)
  return {"user": user, "item_id": tf.zeros([1, 1], tf.int32)}


def ranking_paths(workdir: str) -> dict:
  from twotower.workdir import Workdir
  root = Workdir(workdir).ranking
  return {"root": root, "config": os.path.join(root, "config.json"),
          "checkpoints": os.path.join(root, "checkpoints"),
          "best": os.path.join(root, "best"),
          "tensorboard": os.path.join(root, "tensorboard")}


def load_ranking(workdir: str, run=None):
  """(TrainedRun, RankingConfig, RankingModel with the best ranking epoch's weights).

  ``run``: an already loaded ``TrainedRun`` of this workdir, to skip preparing the data
  again; its model is left alone (the head gets its own copy of the towers).
  """
  from twotower import workdir as workdir_lib
  from twotower.model import retrieval
  paths = ranking_paths(workdir)
  for path in (paths["config"], paths["best"] + ".index"):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: {workdir} holds no trained ranking head; run "
          f"twotower-rank --workdir={workdir} first")
  if run is None:
    run = workdir_lib.load_trained(workdir)
  else:
    towers = retrieval.build_retrieval_model(run.data, run.config)
    tf.train.Checkpoint(model=towers).read(workdir_lib.Workdir(workdir).best).expect_partial()
    run = workdir_lib.TrainedRun(run.config, run.data, towers)
  config = RankingConfig.load(paths["config"])
  model = build_ranking_model(run, config)
  # The checkpoint holds the frozen towers and item table the head was trained with, so the
  # head stays self-consistent even if the retrieval model is retrained later.
  tf.train.Checkpoint(model=model).read(paths["best"]).expect_partial()
  return run, config, model


# -- raw-string SavedModel ----------------------------------------------------------------


def _string_lookup(vocab: Vocabulary) -> tf_keras.layers.StringLookup:
  """StringLookup with the Vocabulary's id layout, checked token by token."""
  layer = tf_keras.layers.StringLookup(vocabulary=list(vocab.tokens), mask_token="",
                                       num_oov_indices=vocab.num_oov_buckets)
  probe = np.concatenate([vocab.tokens.astype(str),
                          ["", "<twotower-unseen-a>", "<twotower-unseen-b>"]])
  got = layer(tf.constant(probe)).numpy()
  want = vocab.lookup(probe.astype(object))
  if not np.array_equal(got, want):
    bad = int(np.flatnonzero(got != want)[0])
    raise ValueError(f"StringLookup maps {probe[bad]!r} to {got[bad]}, the vocabulary to "
                     f"{want[bad]}: the exported model would disagree with training")
  return layer


def tokenize_in_graph(values: tf.Tensor, max_tokens: int) -> tf.Tensor:
  """[B] raw multi-valued strings -> [B, max_tokens] tokens, '' padded (twin of
  features.tokenize: strip, split on runs of spaces / '|', keep the first max_tokens)."""
  joined = tf.strings.regex_replace(tf.strings.strip(values), SEPARATORS, "|")
  parts = tf.strings.split(joined, sep="|")
  parts = tf.ragged.boolean_mask(parts, tf.not_equal(parts, ""))
  return parts[:, :max_tokens].to_tensor(default_value="", shape=[None, max_tokens])


class _RawRanker(tf.Module):
  """Raw strings in, scores out: StringLookups, then the ranking model."""

  def __init__(self, model: RankingModel, data, history_length: int):
    super().__init__(name="ranking_model")
    self.model = model
    self.user_lookup = _string_lookup(data.user_vocab)
    self.item_lookup = _string_lookup(data.item_vocab)
    self._specs = list(data.user_features.specs)
    self.feature_lookups = {s.name: _string_lookup(s.vocab) for s in self._specs}
    reserved = {"user_id", HISTORY, "item_ids"} & set(self.feature_lookups)
    if reserved:
      raise ValueError(f"user feature names {sorted(reserved)} clash with ranking inputs")
    self._length = history_length
    self.history_length = tf.Variable(history_length, trainable=False, name="history_length")
    self.user_feature_names = tf.Variable([s.name for s in self._specs] or [""],
                                          trainable=False, dtype=tf.string,
                                          name="user_feature_names")
    self.num_user_features = tf.Variable(len(self._specs), trainable=False)

  def input_signature(self) -> dict:
    spec = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
            HISTORY: tf.TensorSpec([None, None], tf.string, name=HISTORY),
            "item_ids": tf.TensorSpec([None, None], tf.string, name="item_ids")}
    for s in self._specs:
      spec[s.name] = tf.TensorSpec([None], tf.string, name=s.name)
    return spec

  def score(self, inputs: dict) -> dict:
    history = self.item_lookup(inputs[HISTORY])
    # Keep the last history_length known-or-OOV entries, wherever the padding is.
    # Keep the last history_length entries, right-aligned (most recent last) as in
    # training, wherever the caller put the padding.
    kept = tf.ragged.boolean_mask(history, tf.not_equal(history, PAD))[:, -self._length:]
    history = tf.reverse(tf.reverse(kept, axis=[1]).to_tensor(
        default_value=PAD, shape=[None, self._length]), axis=[1])
    user = {"user_id": self.user_lookup(inputs["user_id"]), HISTORY: tf.cast(history, tf.int32)}
    for s in self._specs:
      raw = inputs[s.name]
      if s.kind == types.TOKEN_SEQ:
        raw = tokenize_in_graph(raw, s.max_tokens)
      user[s.name] = tf.cast(self.feature_lookups[s.name](raw), tf.int32)
    user["user_id"] = tf.cast(user["user_id"], tf.int32)
    item_ids = inputs["item_ids"]
    scores = self.model({"user": user, "item_id": tf.cast(self.item_lookup(item_ids), tf.int32)},
                        training=False)
    # Padding slots ('' candidate ids) can never outrank a real candidate.
    scores = tf.where(tf.equal(item_ids, ""), tf.constant(-np.inf, scores.dtype), scores)
    return {"scores": scores}


def export_ranking_model(workdir: str, out_dir: str, run=None) -> str:
  """Writes ``<out_dir>/ranking_model/``, a SavedModel of the workdir's best ranking head.

  Signature ``serving_default``: ``user_id`` [B], ``history`` [B, L] ('' padded, most recent
  last), one [B] string per user feature (multi-valued ones as the raw space / '|'
  separated string, '' when missing) and ``item_ids`` [B, N] ('' pads) -> ``scores`` [B, N]
  (-inf at padding). Returns the SavedModel's path. ``run``: see ``load_ranking``.
  """
  run, _, model = load_ranking(workdir, run)
  module = _RawRanker(model, run.data, run.config.data.history_length)
  spec = module.input_signature()
  fn = tf.function(module.score, input_signature=[spec])
  module.serve = fn
  path = os.path.join(out_dir, SAVED_MODEL_DIR)
  tmp = path + ".tmp"
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  tf.saved_model.save(module, tmp, signatures={"serving_default": fn.get_concrete_function()})
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)
  tf.io.gfile.rename(tmp, path)
  return path


class SavedModelReranker:
  """Serving adapter: ``reranker(users, candidate_ids) -> scores`` over the SavedModel.

  ``users`` are raw feature dicts as in ``Recommender.recommend`` (``user_id``, optional
  ``history`` list, feature values; missing ones become ''); ``candidate_ids`` may differ
  in length per user, padding scores -inf. Needs only TensorFlow.
  """

  def __init__(self, path: str):
    if os.path.isdir(os.path.join(path, SAVED_MODEL_DIR)):
      path = os.path.join(path, SAVED_MODEL_DIR)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise FileNotFoundError(f"{path} is not a ranking SavedModel (no saved_model.pb)")
    self.path = path
    self._module = tf.saved_model.load(path)
    self._fn = self._module.signatures["serving_default"]
    self.history_length = int(self._module.history_length.numpy())
    count = int(self._module.num_user_features.numpy())
    names = self._module.user_feature_names.numpy()[:count]
    self.feature_names = [n.decode("utf-8") for n in names]

  def __call__(self, users: Sequence[dict], candidate_ids: Sequence[Sequence[str]]) -> np.ndarray:
    if len(users) != len(candidate_ids):
      raise ValueError(f"{len(users)} users but {len(candidate_ids)} candidate lists")
    width = max((len(c) for c in candidate_ids), default=0)
    if not users or width == 0:
      return np.zeros((len(users), width), np.float32)
    items = np.full((len(users), width), "", dtype=object)
    history = np.full((len(users), self.history_length), "", dtype=object)
    for row, (user, candidates) in enumerate(zip(users, candidate_ids)):
      items[row, :len(candidates)] = [str(c) for c in candidates]
      recent = [str(h) for h in (user.get(HISTORY) or ())][-self.history_length:]
      if recent:
        history[row, -len(recent):] = recent
    inputs = {"user_id": tf.constant([_raw(u.get("user_id")) for u in users]),
              HISTORY: tf.constant(history.astype(str)),
              "item_ids": tf.constant(items.astype(str))}
    for name in self.feature_names:
      inputs[name] = tf.constant([_raw(u.get(name)) for u in users])
    return self._fn(**inputs)["scores"].numpy()


def _raw(value) -> str:
  """A raw feature value as the SavedModel wants it: lists joined by spaces, None -> ''."""
  if value is None:
    return ""
  if isinstance(value, (list, tuple, np.ndarray)):
    return " ".join(str(v) for v in value)
  return str(value)
