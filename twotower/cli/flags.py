"""Flags shared by the jobs, and their mapping onto twotower.config.Config.

Every Config field is a flag of the same name (``--batch_size``, ``--queue_size``...), so a
flagfile is just a list of config values. Defaults come from the dataclasses: one source.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import flags

from twotower import config as config_lib

FLAGS = flags.FLAGS

_SECTIONS = {"data": config_lib.DataConfig, "model": config_lib.ModelConfig,
             "loss": config_lib.LossConfig, "train": config_lib.TrainConfig}

_HELP = {
    "dataset": "Built-in dataset: movielens-100k or synthetic (ignored with --interactions).",
    "interactions": "CSV/TSV interaction log with user_id, item_id, timestamp columns.",
    "user_features": "CSV/TSV of user features keyed by user_id.",
    "item_features": "CSV/TSV of item features keyed by item_id.",
    "allow_bad_rows": "Skip malformed rows (counted in metrics.json) instead of failing.",
    "batch_size": "Training batch size (in-batch candidates per step); the global batch "
                  "when several replicas train.",
    "distribution": "none: one device; mirrored: all local devices (MirroredStrategy); "
                    "multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG, "
                    "one process per worker, each with its own --workdir (README.md).",
    "queue_size": "Cross-batch queue entries M; -1 = auto (8 batches, at most an eighth "
                  "of the catalogue, none if that is under one batch), 0 = in-batch only.",
    "query_memory_size": "Query memory: the last this many rows' queries, each with the "
                         "log-partition of its softmax; the batch's items join those "
                         "softmaxes, so an item meets B + M users as the user meets B + M "
                         "items. -1 = the queue's size (none without a queue), 0 = off.",
    "queue_decoupled": "The queue's entries train the user tower only; the item tower learns "
                       "from the fresh candidates' softmax, as without a queue.",
    "mixed_negatives": "Mixed Negative Sampling: B' items sampled from the whole corpus per "
                       "step, encoded and added as negatives (logQ uses the mixture); 0: off.",
    "mixed_negatives_distribution": "Corpus sampling of --mixed_negatives: uniform, or "
                                    "popularity (training count^0.75).",
    "queue_warmup_steps": "Steps before queue entries are used as negatives.",
    "queue_warmup_drift": "Automatic warm-up: the queue switches on (after "
                          "--queue_warmup_steps) once the item embeddings' drift per "
                          "--drift_every_steps falls below this; 0: by steps only.",
    "drift_every_steps": "Measure the embedding drift (mean L2 change of a fixed item "
                         "sample) every this many steps; logged to TensorBoard and "
                         "metrics.json. 0: off.",
    "temperature": "Softmax temperature over cosine scores.",
    "logq": "Subtract log q(item) from every candidate's logit.",
    "history_length": "Recent items (strictly before the target) pooled by the user tower.",
    "embedding_dim": "Output dimension of both towers.",
    "user_layers": "Hidden layer sizes of the user tower MLP.",
    "item_layers": "Hidden layer sizes of the item tower MLP.",
    "step_limit": "Stop after this many training steps in total (0 = no limit).",
    "seed": "Random seed: data order, initialisation, id dropout.",
}


def define_dataclass_flags(kind, help_texts: dict, prefix: str) -> None:
  """One flag per field of the dataclass ``kind``, typed and defaulted by the field.

  A field already defined as a flag (by another section) is left alone; an Optional float
  defaulting to None is a float flag (its annotation says so, its default cannot).
  """
  for field in dataclasses.fields(kind):
    name, default = field.name, field.default
    if name in FLAGS:
      continue
    help_text = help_texts.get(name, f"{prefix}.{name}")
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float) or (default is None and "float" in str(field.type)):
      flags.DEFINE_float(name, default, help_text)
    elif isinstance(default, tuple):
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def field_value(field: dataclasses.Field):
  """The parsed flag of a dataclass field: list flags become tuples of ints."""
  value = FLAGS[field.name].value
  if isinstance(field.default, tuple):
    try:
      value = tuple(int(v) for v in value)
    except ValueError:
      raise flags.ValidationError(
          f"--{field.name} takes comma-separated integers, got {','.join(value)}") from None
  return value


def define_config_flags(sections: Sequence[str] = ("data", "model", "loss", "train")) -> None:
  for section in sections:
    define_dataclass_flags(_SECTIONS[section], _HELP, section)


def config_from_flags() -> config_lib.Config:
  values = {}
  for section, kind in _SECTIONS.items():
    section_values = {}
    for field in dataclasses.fields(kind):
      if field.name in FLAGS:
        section_values[field.name] = field_value(field)
    values[section] = section_values
  config = config_lib.Config.from_dict(values)
  if config.data.interactions:
    config.data.dataset = None
  return config
