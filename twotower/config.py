"""Typed configuration for every job, saved as the workdir's ``config.json``.

One dataclass per concern; ``Config`` nests them. The CLI builds a Config from flags and the
library functions take a Config, so a run can be reproduced from its config.json alone.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence


@dataclasses.dataclass
class DataConfig:
  dataset: Optional[str] = "movielens-100k"   # movielens-100k | synthetic | None (files)
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
  frequency: str = "static"                   # log q source: static (count table) | streaming
  frequency_buckets: int = 0                  # streaming: hash buckets (0: item vocabulary size)
  frequency_hashes: int = 2                   # streaming: hash functions
  frequency_learning_rate: float = 0.01       # streaming: Yi et al.'s alpha
  mixed_negatives: int = 0                    # B' corpus-sampled negatives per step (MNS)
  mixed_negatives_distribution: str = "uniform"   # uniform | popularity (count^0.75)


@dataclasses.dataclass
class TrainConfig:
  batch_size: int = 512
  epochs: int = 30
  step_limit: int = 0                         # 0: no limit
  learning_rate: float = 0.003
  optimizer: str = "lazy_adam"                 # adam with row-sparse embedding updates
  early_stopping_metric: str = "recall@20"
  patience: int = 4
  lr_plateau_patience: int = 2
  lr_plateau_factor: float = 0.5
  eval_ks: Sequence[int] = (10, 20, 50, 100)
  seed: int = 0
  progress: bool = True
  distribution: str = "none"                  # none | mirrored | multi_worker (TF_CONFIG)
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


@dataclasses.dataclass
class Config:
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    def build(kind, values):
      names = {f.name for f in dataclasses.fields(kind)}
      unknown = set(values) - names
      if unknown:
        raise ValueError(f"unknown {kind.__name__} keys in config: {sorted(unknown)}")
      return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return cls(data=build(DataConfig, d.get("data", {})),
               model=build(ModelConfig, d.get("model", {})),
               loss=build(LossConfig, d.get("loss", {})),
               train=build(TrainConfig, d.get("train", {})))

  @classmethod
  def load(cls, path) -> "Config":
    with open(path) as f:
      return cls.from_dict(json.load(f))
