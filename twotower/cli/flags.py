"""Flags shared by the jobs, and their mapping onto twotower.config's dataclasses.

Every Config field is a flag of the same name (``--batch_size``, ``--queue_size``...), so a
flagfile is just a list of config values; every RankingConfig field is ``--ranking_<field>``
(``--ranking_npratio``), so the pipeline can take both sets at once. Defaults come from the
dataclasses: one source. Each flag's help is written below; a field without one fails at
import, so a new option cannot ship as a bare field name.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Iterable, Sequence

from absl import flags

from twotower import config as config_lib
from twotower.errors import ConfigError

FLAGS = flags.FLAGS

_SECTIONS = {"data": config_lib.DataConfig, "model": config_lib.ModelConfig,
             "loss": config_lib.LossConfig, "train": config_lib.TrainConfig}
RANKING_PREFIX = "ranking_"

_HELP = {
    # data
    "dataset": "Built-in dataset: movielens-100k (fetched once into --cache_dir) or "
               "synthetic (generated with planted structure); ignored with --interactions.",
    "interactions": "CSV/TSV interaction log with user_id, item_id, timestamp columns (and "
                    "an optional rating or label); replaces --dataset.",
    "user_features": "CSV/TSV of user features keyed by user_id, one row per user; "
                     "users without a row get default features.",
    "item_features": "CSV/TSV of item features keyed by item_id, one row per item; "
                     "items without a row get default features.",
    "allow_bad_rows": "Skip malformed rows (counted in metrics.json) instead of failing "
                      "on the first; off so that no data is dropped unnoticed.",
    "valid_fraction": "Share of each user's most recent events held out for validation "
                      "(early stopping), in [0, 1).",
    "test_fraction": "Share of each user's most recent events held out for the test "
                     "metrics, in [0, 1).",
    "min_user_interactions": "Users with fewer events keep them all in training (too few "
                             "to split by time).",
    "history_length": "Recent items (strictly before the target) pooled by the user tower.",
    "max_tokens": "Tokens kept per multi-valued feature (genres, title words); longer "
                  "values are truncated.",
    "num_oov_buckets": "Out-of-vocabulary rows per vocabulary (ids, feature values); 1: "
                       "all unseen values share one learned row.",
    "synthetic_users": "--dataset=synthetic: number of users.",
    "synthetic_items": "--dataset=synthetic: number of items.",
    "synthetic_interactions": "--dataset=synthetic: number of interactions generated.",
    "synthetic_nonlinear_weight": "--dataset=synthetic: weight of a user-feature x "
                                  "item-feature cross in the true preferences, which a dot "
                                  "product must learn through the towers; 0: none.",
    "synthetic_clusters": "--dataset=synthetic: number of topics; more topics mean "
                          "harder negatives.",
    "synthetic_affinity_temperature": "--dataset=synthetic: temperature of each user's "
                                      "topic preferences (> 0); smaller is more peaked.",
    "cache_dir": "Where built-in datasets are cached (default: $TWOTOWER_CACHE or "
                 "~/.cache/twotower).",
    "text_features": "User or item feature columns to read as free text, comma-separated "
                     "(title,description): lower-cased, split on non-word characters, "
                     "encoded by --text_encoder; the exports take the raw strings.",
    "text_max_tokens": "Tokens kept per text value; longer texts are truncated.",
    "synthetic_title_tokens": "--dataset=synthetic: each item gets a title of this many "
                              "tokens drawn mostly from its topic's words (an item table "
                              "column 'title'); 0: no titles.",
    "synthetic_cold_items": "--dataset=synthetic: share of items, in [0, 1), whose events "
                            "all come after the training period (cold-start items).",
    # model
    "embedding_dim": "Output dimension of both towers.",
    "id_embedding_dim": "Dimension of the user and item id embeddings.",
    "feature_embedding_dim": "Dimension of each side-feature embedding.",
    "user_layers": "Hidden layer sizes of the user tower MLP, comma-separated.",
    "item_layers": "Hidden layer sizes of the item tower MLP, comma-separated.",
    "dropout": "Dropout rate of the towers' hidden layers, in [0, 1).",
    "id_dropout": "Share of ids replaced by the OOV id in training, in [0, 1), so that "
                  "the OOV row unseen ids get at serving is trained.",
    "l2_normalize": "L2-normalise both towers' outputs, so that scores are cosines (the "
                    "--temperature is set for that scale).",
    "text_encoder": "Encoder of --text_features: mean (of token embeddings), cnn (1-D "
                    "convolution, max-pooled) or attention (multi-head self-attention, "
                    "additive-attention pooling: NRMS's news encoder).",
    "text_dim": "Dimension of the text encoder's token embeddings and output.",
    "text_layers": "Convolution or self-attention layers of --text_encoder=cnn|attention.",
    "text_heads": "Attention heads of --text_encoder=attention (--text_dim must be a "
                  "multiple).",
    "item_id_dropout": "Share of item ids replaced by the OOV id in training, in [0, 1): "
                       "then items with no training events (cold) embed from their "
                       "features through that trained row; -1: --id_dropout when "
                       "--text_features are set, else 0.",
    # loss
    "temperature": "Softmax temperature over cosine scores (> 0); smaller is sharper.",
    "queue_size": "Cross-batch queue entries M; -1 = auto: a queue only where items run "
                  "a cnn or attention text encoder (8 batches, at most an eighth of the "
                  "catalogue, none if that is under one batch), since with id towers a "
                  "larger batch pays more; 0 = in-batch only.",
    "queue_warmup_steps": "Steps before queue entries are used as negatives (the first "
                          "embeddings move too fast to be reused).",
    "queue_warmup_drift": "Automatic warm-up: the queue switches on (after "
                          "--queue_warmup_steps) once the item embeddings' drift per "
                          "--drift_every_steps falls below this; 0: by steps only.",
    "logq": "Subtract log q(item) from every candidate's logit, so that popular items "
            "are not over-penalised as negatives (sampling-bias correction).",
    "mask_accidental_hits": "Do not count a candidate equal to the row's positive item "
                            "as a negative.",
    "mask_history": "Do not count items in the row's history input as negatives.",
    "queue_centering": "Store and score queue candidates minus their batch mean, which "
                       "removes the drift the queue's stale entries share.",
    "queue_decoupled": "The queue's entries train the user tower only; the item tower learns "
                       "from the fresh candidates' softmax, as without a queue.",
    "query_memory_size": "Query memory: the last this many rows' queries, each with the "
                         "log-partition of its softmax; the batch's items join those "
                         "softmaxes, so an item meets B + M users as the user meets B + M "
                         "items. -1 = the queue's size (none without a queue), 0 = off.",
    "frequency": "Source of log q: static (item counts of the training split) or "
                 "streaming (Yi et al. 2019's hashed estimate, for unbounded data).",
    "frequency_buckets": "--frequency=streaming: hash buckets (0: the item vocabulary "
                         "size).",
    "frequency_hashes": "--frequency=streaming: hash functions, 1 to 5; more lower the "
                        "collision error.",
    "frequency_learning_rate": "--frequency=streaming: Yi et al.'s alpha, in (0, 1]; the "
                               "weight of each new gap between an item's occurrences.",
    "mixed_negatives": "Mixed Negative Sampling: B' items sampled from the whole corpus per "
                       "step, encoded and added as negatives (logQ uses the mixture); 0: off.",
    "mixed_negatives_distribution": "Corpus sampling of --mixed_negatives: uniform, or "
                                    "popularity (training count^0.75).",
    # train
    "batch_size": "Training batch size (in-batch candidates per step); the global batch "
                  "when several replicas train.",
    "epochs": "Most passes over the training split (early stopping may end sooner).",
    "step_limit": "Stop after this many training steps in total (0 = no limit).",
    "learning_rate": "Initial learning rate of --optimizer (> 0).",
    "optimizer": "lazy_adam (Adam updating only the embedding rows a batch touches), "
                 "adam, adagrad or clippy_adagrad.",
    "early_stopping_metric": "Validation metric that picks the best evaluation and stops "
                             "training: recall@K, ndcg@K or hit_rate@K with K in --eval_ks, "
                             "or mrr.",
    "patience": "Evaluations (epochs, unless --eval_every_steps) in a row without a better "
                "--early_stopping_metric before training stops (0: at the first such one).",
    "lr_plateau_patience": "Evaluations (epochs, unless --eval_every_steps) without "
                           "improvement before the learning rate is multiplied by "
                           "--lr_plateau_factor; 0: never.",
    "lr_plateau_factor": "Learning-rate multiplier on a plateau, in (0, 1].",
    "eval_ks": "Cutoffs K of the retrieval metrics (Recall/NDCG/HitRate@K), "
               "comma-separated.",
    "seed": "Random seed: data order, initialisation, id dropout.",
    "progress": "Show a progress bar per epoch on stderr.",
    "distribution": "none: one device; mirrored: all local devices (MirroredStrategy); "
                    "multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG, "
                    "one process per worker, each with its own --workdir (README.md).",
    "checkpoint_every_steps": "Also checkpoint every this many steps, for long epochs "
                              "(0: at the end of each epoch only).",
    "global_clipnorm": "Clip the gradients' global norm to this (0: no clipping).",
    "divergence_spike_factor": "A loss above this many times its moving average counts "
                               "as divergence (> 1), like a non-finite loss.",
    "max_recoveries": "Divergence recoveries (restore the last checkpoint, lower the "
                      "learning rate) before training gives up.",
    "recovery_lr_factor": "Learning-rate multiplier after each divergence recovery, in "
                          "(0, 1].",
    "clippy_variable_relative_threshold": "--optimizer=clippy_adagrad: update clipping "
                                          "relative to each variable's magnitude (>= 0).",
    "clippy_accumulator_relative_threshold": "--optimizer=clippy_adagrad: update clipping "
                                             "relative to the accumulator (>= 0; 0: off).",
    "clippy_absolute_threshold": "--optimizer=clippy_adagrad: absolute floor of the update "
                                 "clipping threshold (>= 0).",
    "drift_every_steps": "Measure the embedding drift (mean L2 change of a fixed item "
                         "sample) every this many steps; logged to TensorBoard and "
                         "metrics.json. 0: off.",
    "drift_sample_size": "Items re-encoded per drift measurement (> 0).",
    "refit": "After early stopping picks the epoch count on validation, train again from "
             "the same initialisation for that many epochs on more data and ship that model: "
             "all (train + valid + test, the default: the newest events are the most "
             "predictive), train_valid (test stays out, so its figure is honest), or none.",
    "refit_continue_epochs": "When the selected length is at most this many epochs (and the "
                             "best evaluation was the last), the refit continues the "
                             "selection model over the events it never trained on instead "
                             "of retraining from scratch: each event is still seen once, at "
                             "about a fifth of the cost (for one-pass runs on large logs). "
                             "0: always retrain.",
    "eval_users": "Validation during training scores a fixed sample of at most this many "
                  "validation users (the same users at every evaluation and for every "
                  "--seed), each against the whole corpus; 0: all of them.",
    "test_users": "The final test scores a fixed sample of at most this many test users; "
                  "0: all of them.",
    "eval_every_steps": "Also validate every this many steps inside an epoch (and at its "
                        "end), for epochs of thousands of steps; --patience and "
                        "--lr_plateau_patience then count evaluations, not epochs. 0: "
                        "once per epoch.",
    "init_from": "Warm start from this finished twotower-train run directory: its "
                 "vocabularies are extended (old ids keep their rows, new ids get a copy of "
                 "its OOV row), and training starts from its best weights, optimizer slots, "
                 "frequency estimator and queue. The features and tower shapes must match. "
                 "Only on a fresh --workdir (a rerun resumes its own checkpoints).",
}

_RANKING_HELP = {
    "examples": "Which split's interactions are the head's positive examples: train, or "
                "valid (the retrieval model has not trained on them).",
    "holdout_fraction": "--ranking_examples=valid: share of the validation users kept out "
                        "for early stopping, in (0, 1).",
    "num_candidates": "Retrieval top-N per query: negatives are mined from it and it is "
                      "what the head re-ranks.",
    "npratio": "Negatives per positive in training and held-out impressions (below "
               "--ranking_num_candidates).",
    "reachable_only": "Train only on positives within the retrieval top-N, the only ones "
                      "the head sees at serving.",
    "random_negative_fraction": "Share of the negatives drawn uniformly from the corpus "
                                "instead of the retrieval top-N, in [0, 1].",
    "loss": "softmax (listwise over 1 + npratio) or bce (pointwise).",
    "rating_threshold": "With ratings: an interaction is positive iff rating >= this "
                        "(default: every interaction is positive).",
    "embedding_dim": "Dimension of the head's own id and feature embeddings.",
    "cross_layers": "DCN-v2 cross layers over the concatenated features (0: none).",
    "cross_projection_dim": "Rank of each low-rank cross layer (0: full rank).",
    "layers": "Hidden layer sizes of the head's MLP, comma-separated.",
    "dropout": "Dropout rate of the head's hidden layers, in [0, 1).",
    "history_similarity": "Add the candidate's max, mean and most recent similarity to "
                          "the user's history items as features.",
    "history_attention": "Pool the user's history with DIN-style attention to the "
                         "candidate.",
    "id_embeddings": "Give the head its own user and candidate id embeddings.",
    "popularity": "Add the candidate's log training count as a feature.",
    "residual_dot": "Add w x the retrieval towers' dot product to the score (w starts at "
                    "1 / temperature), so training starts from the retrieval order.",
    "batch_size": "Positive examples per ranking training step, each scored with its "
                  "--ranking_npratio negatives.",
    "epochs": "Most passes over the ranking examples (early stopping may end sooner).",
    "learning_rate": "Initial learning rate of --ranking_optimizer (> 0).",
    "optimizer": "lazy_adam, adam, adagrad or clippy_adagrad.",
    "global_clipnorm": "Clip the gradients' global norm to this (0: no clipping).",
    "early_stopping_metric": "Validation metric for best epoch / early stopping, e.g. "
                             "two_stage_ndcg@10, gauc, auc, ndcg@10.",
    "patience": "Epochs in a row without a better --ranking_early_stopping_metric "
                "before training stops (0: at the first such epoch).",
    "lr_plateau_patience": "Epochs without improvement before the learning rate is "
                           "multiplied by --ranking_lr_plateau_factor; 0: never.",
    "lr_plateau_factor": "Learning-rate multiplier on a plateau, in (0, 1].",
    "divergence_spike_factor": "A loss above this many times its moving average counts "
                               "as divergence (> 1).",
    "max_recoveries": "Divergence recoveries (restore the last checkpoint, lower the "
                      "learning rate) before training gives up.",
    "recovery_lr_factor": "Learning-rate multiplier after each divergence recovery, in "
                          "(0, 1].",
    "id_dropout": "Share of user ids replaced by OOV in training; -1: the retrieval run's.",
    "seed": "Random seed of the ranking head: negatives, initialisation, order "
            "(twotower-pipeline: default --seed).",
    "progress": "Show a progress bar per epoch on stderr (twotower-pipeline: default "
                "--progress).",
    "max_examples": "Most example interactions (anchors) mined for the head's training, a "
                    "sample fixed by --ranking_seed; 0: all. Mining scores each against "
                    "the corpus.",
    "eval_users": "Most validation / test users in the head's evaluation, a sample fixed "
                  "by --ranking_seed; 0: all.",
    "ann_min_items": "Find the retrieval top-N of the mined examples and of the held-out "
                     "users through a ScaNN searcher (the workdir's index when it matches, "
                     "else one built for it) once the corpus has this many items; below, "
                     "exactly. 0: always exact.",
}


def define_dataclass_flags(kind, help_texts: dict, *, prefix: str = "",
                           alias_unprefixed: bool = False) -> None:
  """One flag ``--<prefix><field>`` per field of the dataclass ``kind``, typed and defaulted
  by the field; ``alias_unprefixed`` also accepts ``--<field>`` (for old flagfiles).

  A field already defined as a flag (by another section) is left alone; an Optional float
  defaulting to None is a float flag (its annotation says so, its default cannot); a
  ``Literal`` field is an enum flag, so a misspelt value fails as the flags are parsed.
  """
  hints = typing.get_type_hints(kind)
  for field in dataclasses.fields(kind):
    name, default = prefix + field.name, typing.cast(typing.Any, field.default)
    if name in FLAGS:
      continue
    if not help_texts.get(field.name):
      raise ValueError(f"--{name} ({kind.__name__}.{field.name}) has no help text: add one "
                       f"to twotower/cli/flags.py")
    help_text = help_texts[field.name]
    choices = typing.get_args(hints[field.name])
    if typing.get_origin(hints[field.name]) is typing.Literal:
      flags.DEFINE_enum(name, default, list(choices), help_text)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float) or (default is None and float in choices):
      flags.DEFINE_float(name, default, help_text)
    elif isinstance(default, tuple):
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(name, default, help_text)
    if alias_unprefixed and prefix and field.name not in FLAGS:
      flags.DEFINE_alias(field.name, name)


def field_value(field: dataclasses.Field, prefix: str = ""):
  """The parsed flag of a dataclass field: list flags become tuples (of ints, unless the
  field is a ``Sequence[str]``)."""
  name = prefix + field.name
  value: typing.Any = FLAGS[name].value
  if isinstance(field.default, tuple) and field.type == "Sequence[str]":
    return tuple(v.strip() for v in value)
  if isinstance(field.default, tuple):
    try:
      value = tuple(int(v) for v in value)
    except ValueError:
      raise ConfigError(
          f"--{name} takes comma-separated integers, got {','.join(value)}") from None
  return value


def define_config_flags(sections: Sequence[str] = ("data", "model", "loss", "train")) -> None:
  for section in sections:
    define_dataclass_flags(_SECTIONS[section], _HELP)


def config_from_flags() -> config_lib.Config:
  """The Config the flags describe, validated, so that a bad value fails before any work."""
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
  config.validate()
  return config


def define_ranking_flags(*, alias_unprefixed: bool = False) -> None:
  """``--ranking_<field>`` for every RankingConfig field."""
  define_dataclass_flags(config_lib.RankingConfig, _RANKING_HELP, prefix=RANKING_PREFIX,
                         alias_unprefixed=alias_unprefixed)


def ranking_options_from_flags(inherit: Iterable[str] = ()) -> dict:
  """RankingConfig fields -> values of their ``--ranking_`` flags, validated.

  Fields named in ``inherit`` are left out unless their flag was given, so that the caller's
  value (the pipeline's --seed and --progress) applies.
  """
  inherit = set(inherit)
  options = {field.name: field_value(field, RANKING_PREFIX)
             for field in dataclasses.fields(config_lib.RankingConfig)
             if field.name not in inherit or FLAGS[RANKING_PREFIX + field.name].present}
  try:
    config_lib.RankingConfig.from_dict(options).validate()
  except ConfigError as e:
    raise ConfigError(_ranking_flag_names(str(e))) from e
  return options


def _ranking_flag_names(message: str) -> str:
  """RankingConfig's messages name ``--<field>``; its flags are ``--ranking_<field>``."""
  fields = "|".join(f.name for f in dataclasses.fields(config_lib.RankingConfig))
  return re.sub(rf"--({fields})\b", rf"--{RANKING_PREFIX}\1", message)
