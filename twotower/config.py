"""Typed configuration for every job, its validation and its one JSON round-trip.

One dataclass per concern; ``Config`` nests them and is saved as the workdir's
``config.json``; ``RankingConfig`` (the ranking head's job) as ``ranking/config.json``. The
CLI builds them from flags and the library functions take them, so a run can be reproduced
from its config files alone. ``validate()`` checks every field before any data is read,
each error naming its flag. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal, Optional, Sequence, get_args

from twotower.errors import ConfigError

Dataset = Literal["movielens-100k", "synthetic"]
Optimizer = Literal["lazy_adam", "adam", "adagrad", "clippy_adagrad"]
Distribution = Literal["none", "mirrored", "multi_worker"]
Frequency = Literal["static", "streaming"]
MixedNegativesDistribution = Literal["uniform", "popularity"]
RankingLoss = Literal["bce", "softmax"]
RankingExamples = Literal["train", "valid"]
TextEncoder = Literal["mean", "cnn", "attention"]
Refit = Literal["none", "train_valid", "all"]

DATASETS = get_args(Dataset)
OPTIMIZERS = get_args(Optimizer)
DISTRIBUTIONS = get_args(Distribution)
FREQUENCIES = get_args(Frequency)
MIXED_NEGATIVES_DISTRIBUTIONS = get_args(MixedNegativesDistribution)
RANKING_LOSSES = get_args(RankingLoss)
RANKING_EXAMPLES = get_args(RankingExamples)
REFITS = get_args(Refit)
TEXT_ENCODERS = get_args(TextEncoder)
# Hash functions StreamingFrequencyEstimator has multipliers for (model/frequency.py).
MAX_FREQUENCY_HASHES = 5


@dataclasses.dataclass
class DataConfig:
  dataset: Optional[Dataset] = "movielens-100k"   # None: --interactions files
  interactions: Optional[str] = None
  user_features: Optional[str] = None
  item_features: Optional[str] = None
  allow_bad_rows: bool = False
  valid_fraction: float = 0.1                 # per user, by time
  test_fraction: float = 0.1
  min_user_interactions: int = 3              # fewer: all of the user's events go to train
  history_length: int = 20
  max_tokens: int = 8                         # tokens kept per multi-valued field
  num_oov_buckets: int = 1
  # synthetic generator sizes (dataset == "synthetic")
  synthetic_users: int = 5000
  synthetic_items: int = 2000
  synthetic_interactions: int = 100_000
  synthetic_nonlinear_weight: float = 0.0
  synthetic_clusters: int = 20                # topics; more means harder negatives
  synthetic_affinity_temperature: float = 0.2  # smaller means more peaked preferences
  cache_dir: Optional[str] = None
  text_features: Sequence[str] = ()           # feature columns tokenised as free text
  text_max_tokens: int = 32                   # tokens kept per text value
  synthetic_title_tokens: int = 0             # synthetic: title length per item; 0: no titles
  synthetic_cold_items: float = 0.0           # synthetic: share of items with no training events


@dataclasses.dataclass
class ModelConfig:
  embedding_dim: int = 64                     # output of each tower
  id_embedding_dim: int = 64
  feature_embedding_dim: int = 16
  user_layers: Sequence[int] = (256,)
  item_layers: Sequence[int] = (256,)
  dropout: float = 0.0
  id_dropout: float = 0.05                    # trains the OOV row used by unseen ids at serving
  l2_normalize: bool = True
  text_encoder: TextEncoder = "mean"          # mean | cnn | attention (NRMS's news encoder)
  text_dim: int = 64                          # token embedding and text vector dimension
  text_layers: int = 1                        # cnn / attention layers
  text_heads: int = 4                         # attention heads (text_dim must divide)
  item_id_dropout: float = -1.0               # -1: --id_dropout with --text_features, else 0


def item_id_dropout(config: "Config") -> float:
  """The item tower's id dropout: the flag, or with -1 ``--id_dropout`` when the items have
  text to be encoded from (cold items then embed through the trained OOV row), else 0."""
  m = config.model
  if m.item_id_dropout >= 0:
    return m.item_id_dropout
  return m.id_dropout if config.data.text_features else 0.0


@dataclasses.dataclass
class LossConfig:
  temperature: float = 0.05
  queue_size: int = -1                        # -1: auto (retrieval.resolve_queue_size); 0: off
  queue_warmup_steps: int = 200
  queue_warmup_drift: float = 0.0             # >0: queue on once embedding drift < this
  logq: bool = True
  mask_accidental_hits: bool = True
  mask_history: bool = True                   # items in the row's history input are not negatives
  queue_centering: bool = True                # store and score candidates minus their batch mean
  queue_decoupled: bool = False               # queue trains the user tower only (see retrieval.py)
  query_memory_size: int = -1                 # recent queries whose softmax the batch joins;
                                              # -1: the queue's size (none without a queue); 0: off
  frequency: Frequency = "static"             # log q source: static (count table) | streaming
  frequency_buckets: int = 0                  # streaming: hash buckets (0: item vocabulary size)
  frequency_hashes: int = 2                   # streaming: hash functions
  frequency_learning_rate: float = 0.01       # streaming: Yi et al.'s alpha
  mixed_negatives: int = 0                    # B' corpus-sampled negatives per step (MNS)
  # Corpus sampling of the mixed negatives: uniform, or popularity (count^0.75).
  mixed_negatives_distribution: MixedNegativesDistribution = "uniform"


@dataclasses.dataclass
class TrainConfig:
  batch_size: int = 512
  epochs: int = 30
  step_limit: int = 0                         # 0: no limit
  learning_rate: float = 0.003
  optimizer: Optimizer = "lazy_adam"           # adam with row-sparse embedding updates
  early_stopping_metric: str = "recall@20"
  patience: int = 4
  lr_plateau_patience: int = 2
  lr_plateau_factor: float = 0.5
  eval_ks: Sequence[int] = (10, 20, 50, 100)
  seed: int = 0
  progress: bool = True
  distribution: Distribution = "none"         # none | mirrored | multi_worker (TF_CONFIG)
  checkpoint_every_steps: int = 0             # 0: at the end of each epoch only
  global_clipnorm: float = 0.0                # 0: no gradient-norm clipping
  divergence_spike_factor: float = 10.0       # loss above this x its moving average diverged
  max_recoveries: int = 3                     # divergence recoveries before giving up
  recovery_lr_factor: float = 0.5             # learning rate multiplier after a recovery
  clippy_variable_relative_threshold: float = 0.1   # clippy_adagrad: see train/optimizers
  clippy_accumulator_relative_threshold: float = 0.0
  clippy_absolute_threshold: float = 1e-7
  drift_every_steps: int = 100                # Δt of the embedding-drift monitor; 0: off
  drift_sample_size: int = 1024               # items re-encoded per drift measurement
  refit: Refit = "all"                        # after selection, retrain on more of the data
  refit_continue_epochs: float = 1.0          # selected lengths up to this: refit continues
  eval_users: int = 10_000                    # validation users sampled per evaluation; 0: all
  test_users: int = 0                         # test users sampled for the final test; 0: all
  eval_every_steps: int = 0                   # also validate every N steps; 0: per epoch only
  init_from: Optional[str] = None             # warm start: a finished run directory


@dataclasses.dataclass
class Config:
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def to_json(self) -> str:
    return _to_json(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    return cls(data=_build(DataConfig, d.get("data", {}), "DataConfig keys in config"),
               model=_build(ModelConfig, d.get("model", {}), "ModelConfig keys in config"),
               loss=_build(LossConfig, d.get("loss", {}), "LossConfig keys in config"),
               train=_build(TrainConfig, d.get("train", {}), "TrainConfig keys in config"))

  @classmethod
  def load(cls, path) -> "Config":
    return _load(cls.from_dict, path)

  def validate(self) -> None:
    """Flag errors up front, each naming its flag, before minutes of data loading."""
    t, loss, d, m = self.train, self.loss, self.data, self.model
    not_streaming = loss.frequency != "streaming"   # the frequency_* flags only matter there
    _check([
        (t.batch_size > 0, f"--batch_size must be positive, got {t.batch_size}"),
        (t.epochs > 0, f"--epochs must be positive, got {t.epochs}"),
        (t.step_limit >= 0, f"--step_limit must be >= 0, got {t.step_limit}"),
        (_positive(t.learning_rate), f"--learning_rate must be positive, got {t.learning_rate}"),
        (t.optimizer in OPTIMIZERS,
         f"--optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}"),
        (t.global_clipnorm >= 0, f"--global_clipnorm must be >= 0, got {t.global_clipnorm}"),
        (min(t.clippy_variable_relative_threshold, t.clippy_accumulator_relative_threshold,
             t.clippy_absolute_threshold) >= 0,
         "--clippy_variable_relative_threshold, --clippy_accumulator_relative_threshold and "
         "--clippy_absolute_threshold must be >= 0"),
        *_schedule_checks(t),
        (t.checkpoint_every_steps >= 0,
         f"--checkpoint_every_steps must be >= 0, got {t.checkpoint_every_steps}"),
        (t.distribution in DISTRIBUTIONS,
         f"--distribution must be one of {DISTRIBUTIONS}, got {t.distribution!r}"),
        (_positive(loss.temperature), f"--temperature must be positive, got {loss.temperature}"),
        (loss.queue_size >= -1,
         f"--queue_size must be -1 (auto), 0 (off) or positive, got {loss.queue_size}"),
        (loss.queue_size <= 0 or loss.queue_size >= t.batch_size,
         f"--queue_size ({loss.queue_size}) must be at least --batch_size ({t.batch_size}), or 0 "
         f"for in-batch only"),
        (loss.query_memory_size >= -1,
         f"--query_memory_size must be -1 (the queue's size), 0 (off) or positive, got "
         f"{loss.query_memory_size}"),
        (loss.query_memory_size <= 0 or loss.queue_size != 0,
         "--query_memory_size needs the item queue (--queue_size != 0): without it the "
         "batch's items meet more users than the users meet items, and training degrades "
         "(experiments/RESULTS.md)"),
        (loss.queue_warmup_steps >= 0,
         f"--queue_warmup_steps must be >= 0, got {loss.queue_warmup_steps}"),
        (loss.queue_warmup_drift >= 0,
         f"--queue_warmup_drift must be >= 0, got {loss.queue_warmup_drift}"),
        (loss.queue_warmup_drift == 0 or t.drift_every_steps > 0,
         "--queue_warmup_drift needs the drift monitor: set --drift_every_steps > 0"),
        (t.drift_every_steps >= 0,
         f"--drift_every_steps must be >= 0, got {t.drift_every_steps}"),
        (t.drift_sample_size > 0,
         f"--drift_sample_size must be positive, got {t.drift_sample_size}"),
        (loss.frequency in FREQUENCIES,
         f"--frequency must be 'static' or 'streaming', got {loss.frequency!r}"),
        (not_streaming or loss.frequency_buckets >= 0,
         f"--frequency_buckets must be >= 0, got {loss.frequency_buckets}"),
        (not_streaming or 1 <= loss.frequency_hashes <= MAX_FREQUENCY_HASHES,
         f"--frequency_hashes must be in [1, {MAX_FREQUENCY_HASHES}], got "
         f"{loss.frequency_hashes}"),
        (not_streaming or 0 < loss.frequency_learning_rate <= 1,
         f"--frequency_learning_rate must be in (0, 1], got {loss.frequency_learning_rate}"),
        (loss.mixed_negatives >= 0, f"--mixed_negatives must be >= 0, got {loss.mixed_negatives}"),
        (loss.mixed_negatives_distribution in MIXED_NEGATIVES_DISTRIBUTIONS,
         f"--mixed_negatives_distribution must be one of {MIXED_NEGATIVES_DISTRIBUTIONS}, "
         f"got {loss.mixed_negatives_distribution!r}"),
        (d.interactions or d.dataset in DATASETS,
         f"--dataset must be one of {DATASETS} (or pass --interactions), got {d.dataset!r}"),
        (d.history_length > 0, f"--history_length must be positive, got {d.history_length}"),
        (0 <= d.valid_fraction < 1,
         f"--valid_fraction must be in [0, 1), got {d.valid_fraction}"),
        (0 <= d.test_fraction < 1, f"--test_fraction must be in [0, 1), got {d.test_fraction}"),
        (d.valid_fraction + d.test_fraction < 1,
         f"--valid_fraction + --test_fraction must be < 1, got "
         f"{d.valid_fraction} + {d.test_fraction}"),
        (d.max_tokens > 0, f"--max_tokens must be positive, got {d.max_tokens}"),
        (d.synthetic_clusters >= 1,
         f"--synthetic_clusters must be positive, got {d.synthetic_clusters}"),
        (d.synthetic_affinity_temperature > 0,
         f"--synthetic_affinity_temperature must be positive, got "
         f"{d.synthetic_affinity_temperature}"),
        (d.num_oov_buckets >= 1, f"--num_oov_buckets must be >= 1, got {d.num_oov_buckets}"),
        (m.embedding_dim > 0, f"--embedding_dim must be positive, got {m.embedding_dim}"),
        (m.id_embedding_dim > 0,
         f"--id_embedding_dim must be positive, got {m.id_embedding_dim}"),
        (m.feature_embedding_dim > 0,
         f"--feature_embedding_dim must be positive, got {m.feature_embedding_dim}"),
        (all(n > 0 for n in m.user_layers),
         f"--user_layers must all be positive, got {list(m.user_layers)}"),
        (all(n > 0 for n in m.item_layers),
         f"--item_layers must all be positive, got {list(m.item_layers)}"),
        (0 <= m.dropout < 1, f"--dropout must be in [0, 1), got {m.dropout}"),
        (len(t.eval_ks) > 0 and all(k > 0 for k in t.eval_ks),
         f"--eval_ks must be positive (and at least one), got {list(t.eval_ks)}"),
        (0 <= m.id_dropout < 1, f"--id_dropout must be in [0, 1), got {m.id_dropout}"),
        (t.refit in REFITS, f"--refit must be one of {REFITS}, got {t.refit!r}"),
        (t.refit_continue_epochs >= 0,
         f"--refit_continue_epochs must be >= 0, got {t.refit_continue_epochs}"),
        (t.eval_users >= 0, f"--eval_users must be >= 0 (0: all), got {t.eval_users}"),
        (t.test_users >= 0, f"--test_users must be >= 0 (0: all), got {t.test_users}"),
        (t.eval_every_steps >= 0,
         f"--eval_every_steps must be >= 0 (0: once per epoch), got {t.eval_every_steps}"),
        (t.init_from is None or bool(t.init_from.strip()),
         "--init_from must name a run directory (or be left unset)"),
        (all(name.strip() for name in d.text_features),
         f"--text_features must name feature columns, got {list(d.text_features)}"),
        (d.text_max_tokens > 0, f"--text_max_tokens must be positive, got {d.text_max_tokens}"),
        (d.synthetic_title_tokens >= 0,
         f"--synthetic_title_tokens must be >= 0 (0: no titles), got "
         f"{d.synthetic_title_tokens}"),
        (0 <= d.synthetic_cold_items < 1,
         f"--synthetic_cold_items must be in [0, 1), got {d.synthetic_cold_items}"),
        (m.text_encoder in TEXT_ENCODERS,
         f"--text_encoder must be one of {TEXT_ENCODERS}, got {m.text_encoder!r}"),
        (m.text_dim > 0, f"--text_dim must be positive, got {m.text_dim}"),
        (m.text_layers > 0, f"--text_layers must be positive, got {m.text_layers}"),
        (m.text_heads > 0, f"--text_heads must be positive, got {m.text_heads}"),
        (m.text_encoder != "attention" or m.text_dim % m.text_heads == 0,
         f"--text_dim ({m.text_dim}) must be a multiple of --text_heads ({m.text_heads}) "
         f"for --text_encoder=attention"),
        (m.item_id_dropout == -1 or 0 <= m.item_id_dropout < 1,
         f"--item_id_dropout must be -1 (auto) or in [0, 1), got {m.item_id_dropout}"),
    ])
    metric = t.early_stopping_metric
    names = ({f"{kind}@{k}" for kind in ("recall", "ndcg", "hit_rate") for k in t.eval_ks}
             | {"mrr"})
    if metric not in names:
      raise ConfigError(f"--early_stopping_metric must be one of {sorted(names)}, got "
                       f"{metric!r}")


@dataclasses.dataclass
class RankingConfig:
  """Options of the ranking job, saved as ``<workdir>/ranking/config.json``."""
  # Candidates and examples.
  examples: RankingExamples = "train"  # which split's interactions are examples
  holdout_fraction: float = 0.3        # examples=valid: validation users kept for early stop
  num_candidates: int = 100            # retrieval top-N: mined for negatives, re-ranked
  npratio: int = 4                     # negatives per positive
  reachable_only: bool = True          # only positives the retrieval top-N contains
  random_negative_fraction: float = 0.0   # share of the negatives drawn from the whole corpus
  loss: RankingLoss = "bce"            # bce: pointwise; softmax: listwise over 1 + npratio
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
  popularity: bool = True              # log training count of the candidate
  residual_dot: bool = True            # add w * tower dot product, w init 1 / temperature
  # Training.
  batch_size: int = 256
  epochs: int = 10
  learning_rate: float = 0.001
  optimizer: Optimizer = "lazy_adam"   # row-sparse: its id tables' cost is the batch's rows
  global_clipnorm: float = 0.0
  early_stopping_metric: str = "two_stage_ndcg@10"
  patience: int = 3
  lr_plateau_patience: int = 2
  lr_plateau_factor: float = 0.5
  divergence_spike_factor: float = 10.0   # as TrainConfig's
  max_recoveries: int = 3
  recovery_lr_factor: float = 0.5
  id_dropout: float = -1.0             # -1: the retrieval run's id_dropout
  seed: int = 0
  progress: bool = True
  # Scale: mining and evaluation cost queries x corpus; these bound the queries.
  max_examples: int = 100_000          # anchors mined, a seeded sample; 0: all
  eval_users: int = 5_000              # held-out users per split, a seeded sample; 0: all
  ann_min_items: int = 200_000         # mined & held-out top-N via ScaNN from this size; 0: never

  def to_json(self) -> str:
    return _to_json(self)

  @classmethod
  def from_dict(cls, values: dict) -> "RankingConfig":
    return _build(cls, values, "ranking options")

  @classmethod
  def load(cls, path: str) -> "RankingConfig":
    return _load(cls.from_dict, path)

  def validate(self) -> None:
    """As Config.validate: every option checked before the retrieval run is loaded."""
    _check([
        (self.num_candidates > 0,
         f"--num_candidates must be positive, got {self.num_candidates}"),
        (self.npratio > 0, f"--npratio must be positive, got {self.npratio}"),
        (self.npratio < self.num_candidates,
         f"--npratio ({self.npratio}) must be below --num_candidates ({self.num_candidates})"),
        (0.0 <= self.random_negative_fraction <= 1.0,
         f"--random_negative_fraction must be in [0, 1], got {self.random_negative_fraction}"),
        (self.examples in RANKING_EXAMPLES,
         f"--examples must be one of {RANKING_EXAMPLES}, got {self.examples!r}"),
        (0.0 < self.holdout_fraction < 1.0,
         f"--holdout_fraction must be in (0, 1), got {self.holdout_fraction}"),
        (self.loss in RANKING_LOSSES,
         f"--loss must be one of {RANKING_LOSSES}, got {self.loss!r}"),
        (self.embedding_dim > 0, f"--embedding_dim must be positive, got {self.embedding_dim}"),
        (self.cross_layers >= 0, f"--cross_layers must be >= 0, got {self.cross_layers}"),
        (self.cross_projection_dim >= 0,
         f"--cross_projection_dim must be >= 0, got {self.cross_projection_dim}"),
        (all(n > 0 for n in self.layers),
         f"--layers must all be positive, got {list(self.layers)}"),
        (self.batch_size > 0, f"--batch_size must be positive, got {self.batch_size}"),
        (self.epochs > 0, f"--epochs must be positive, got {self.epochs}"),
        (_positive(self.learning_rate),
         f"--learning_rate must be positive, got {self.learning_rate}"),
        (self.optimizer in OPTIMIZERS,
         f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
        (self.global_clipnorm >= 0,
         f"--global_clipnorm must be >= 0, got {self.global_clipnorm}"),
        *_schedule_checks(self),
        (self.id_dropout < 1, f"--id_dropout must be below 1, got {self.id_dropout}"),
        (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
        (self.max_examples >= 0, f"--max_examples must be >= 0, got {self.max_examples}"),
        (self.eval_users >= 0, f"--eval_users must be >= 0, got {self.eval_users}"),
        (self.ann_min_items >= 0, f"--ann_min_items must be >= 0, got {self.ann_min_items}"),
    ])


def _schedule_checks(c) -> list:
  """The training skeleton's settings (train/runner.py), shared by both configs."""
  return [
      (c.patience >= 0, f"--patience must be >= 0, got {c.patience}"),
      (c.lr_plateau_patience >= 0,
       f"--lr_plateau_patience must be >= 0, got {c.lr_plateau_patience}"),
      (0 < c.lr_plateau_factor <= 1,
       f"--lr_plateau_factor must be in (0, 1], got {c.lr_plateau_factor}"),
      (c.max_recoveries >= 0, f"--max_recoveries must be >= 0, got {c.max_recoveries}"),
      (0 < c.recovery_lr_factor <= 1,
       f"--recovery_lr_factor must be in (0, 1], got {c.recovery_lr_factor}"),
      (c.divergence_spike_factor > 1,
       f"--divergence_spike_factor must be > 1, got {c.divergence_spike_factor}"),
  ]


def _positive(value: float) -> bool:
  return value > 0 and math.isfinite(value)


def _check(checks) -> None:
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)


def _to_json(config) -> str:
  return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def _load(from_dict, path):
  """``from_dict`` of a config file; a broken one (in a run directory: the user's to fix)
  is a ConfigError naming the file."""
  try:
    with open(path) as f:
      values = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}); restore it, or train into a new "
                      f"--workdir") from None
  try:
    return from_dict(values)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


def _build(kind, values: dict, what: str):
  """``kind(**values)`` with JSON lists back as tuples; unknown keys are an error."""
  names = {f.name for f in dataclasses.fields(kind)}
  unknown = set(values) - names
  if unknown:
    raise ConfigError(f"unknown {what}: {sorted(unknown)}; known: {sorted(names)}")
  return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
