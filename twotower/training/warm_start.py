"""Warm start (--init_from=RUN_DIR): a new run on a grown log begins where a parent run ended.

The new run's vocabularies extend the parent's (``Vocabulary.extend``: an old id keeps its
row, a new id is appended, an id absent from the new log keeps its row and stays in the
corpus), so every table of the parent maps onto a prefix of the new one. ``apply`` then
fills the freshly built model and optimizer before the first step:

* tower weights from the parent's best checkpoint; a new id's row is a copy of the parent's
  trained OOV row that the id hashed to there (what the parent model answered for it);
* optimizer slots, the streaming frequency estimator, the CBNS queue and the
  query memory from the parent's latest checkpoint; new rows keep their fresh slot values
  (Adam's zeros, Adagrad's initial accumulator); a queue of another size keeps its newest
  entries; an estimator with another bucket count is re-hashed;
* the learning rate, the step count and the loop state (epochs, early stopping) start
  afresh; the warm-started state is kept as ``checkpoints/warm_init``, where the refit
  starts too (``restore_init``).

A changed tower shape, embedding dim or feature set is a ConfigError naming the flag and both
values. The job (jobs/train.py) calls this only on a fresh workdir: a rerun resumes its own
checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.checkpoint import graph_view
from tensorflow.python.trackable import trackable_utils

from twotower import fileio
from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.data.features import SavedVocabularies
from twotower.data.vocab import Vocabulary
from twotower.errors import ConfigError, UserError
from twotower.model.frequency import StreamingFrequencyEstimator
from twotower.workdir import Workdir

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
# Fields whose change alters a weight's shape: (config section, field).
_SHAPE_FIELDS = (("model", "embedding_dim"), ("model", "id_embedding_dim"),
                 ("model", "feature_embedding_dim"), ("model", "user_layers"),
                 ("model", "item_layers"), ("data", "num_oov_buckets"),
                 ("data", "max_tokens"))
# Read from the parent's best checkpoint (the rest from its latest one).
_FROM_BEST = ("model/user_tower/", "model/item_tower/")
# Never carried: this run's own schedule starts from its own --learning_rate, and its
# step count from 0 (early stopping, the refit's length and --step_limit count this run's
# steps; the moments are kept, and Adam's bias correction restarting with them makes the
# first few hundred steps smaller ones).
_NOT_CARRIED = ("optimizer/_learning_rate", "optimizer/_iterations",
                # which items this run's own training data has (ItemTower.trained_ids)
                "model/item_tower/trained_ids")
INIT = "warm_init"   # under checkpoints/: the warm-started state, for the refit


@dataclasses.dataclass
class Parent:
  """A finished run to start from."""
  path: str
  config: Config
  vocab: SavedVocabularies
  best: str               # checkpoint prefix of the best epoch's model
  latest: Optional[str]   # checkpoint prefix of the last training state (None: best only)


def resuming(workdir: str) -> bool:
  """Whether ``workdir`` already holds training checkpoints (a rerun resumes them)."""
  return os.path.exists(os.path.join(Workdir(workdir).checkpoints, "checkpoint"))


def load_parent(path: str, config: Config) -> Parent:
  """The run ``--init_from`` names, checked against this run's shapes before data loads."""
  wd = Workdir(path)
  flag = f"--init_from={path}"
  if not os.path.isdir(path):
    raise UserError(f"{flag}: no such run directory")
  for needed in (wd.config, os.path.join(wd.vocab, "features.json"), wd.best + ".index"):
    if not os.path.exists(needed):
      raise UserError(f"{flag}: {needed} not found; the parent must be a finished "
                      f"twotower-train run")
  parent_config = Config.load(wd.config)
  for section, name in _SHAPE_FIELDS:
    mine = getattr(getattr(config, section), name)
    theirs = getattr(getattr(parent_config, section), name)
    if tuple(np.atleast_1d(mine)) != tuple(np.atleast_1d(theirs)):
      raise ConfigError(f"{flag}: --{name} is {_show(mine)} here but {_show(theirs)} in the "
                        f"parent run; a warm start keeps the parent's shapes: pass "
                        f"--{name}={_show(theirs)}, or train from scratch without --init_from")
  # The shipped model (checkpoints/best) is the refit's when the parent refitted: its
  # optimizer, queue and estimator are then the refit's latest, not the selection run's.
  latest = (tf.train.latest_checkpoint(os.path.join(wd.refit, "checkpoints"))
            or tf.train.latest_checkpoint(wd.checkpoints))
  return Parent(path, parent_config, SavedVocabularies.load(wd.vocab), wd.best, latest)


def base_vocabularies(config: Config, workdir: str,
                      parent: Optional[Parent]) -> Optional[SavedVocabularies]:
  """The vocabularies this run's must extend: the parent's on a fresh warm start, the run's
  own on a rerun of one (the same ids again, the parent no longer needed), else None."""
  if parent is not None:
    return parent.vocab
  own = os.path.join(Workdir(workdir).vocab, "features.json")
  return SavedVocabularies.load(Workdir(workdir).vocab) if (
      config.train.init_from and os.path.exists(own)) else None


def _show(value) -> str:
  return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def time_range(data: prepare_lib.PreparedData) -> dict:
  """Earliest and latest interaction timestamp of a run's data."""
  ts = data.events.timestamp
  return {"min": int(ts.min()), "max": int(ts.max())} if len(ts) else {"min": None, "max": None}


def parent_record(parent: Parent) -> dict:
  """What metrics.json and the export manifest say about the parent run."""
  metrics_path = Workdir(parent.path).metrics
  metrics = fileio.read_json(metrics_path) if os.path.exists(metrics_path) else {}
  return {"path": os.path.abspath(parent.path),
          # The index file holds every tensor's checksum: its hash names the weights.
          "fingerprint": "sha256:" + fileio.sha256_file(parent.best + ".index"),
          "data_time_range": metrics.get("data_time_range"),
          "steps": (metrics.get("final") or {}).get("steps"),
          "refit_steps": ((metrics.get("final") or {}).get("refit") or {}).get("steps")}


def variable_paths(**roots) -> dict:
  """Checkpoint key -> variable for everything ``tf.train.Checkpoint(**roots)`` saves.

  The keys are the checkpoint's own (TensorFlow's breadth-first object paths, through its
  internal graph view: no public API names them), so that a variable here finds its value
  under the same key in the parent's checkpoint files.
  """
  root = tf.train.Checkpoint(**roots)   # held: the view keeps only a weak reference
  _, paths = graph_view.ObjectGraphView(root).breadth_first_traversal()
  return {trackable_utils.object_path_to_string(path) + _VALUE: obj
          for obj, path in paths.items() if isinstance(obj, tf.Variable)}


def _slot_owners(optimizer, variables) -> dict:
  """slot variable ref -> the model variable it belongs to (tf_keras optimizers keep one
  list per slot kind, indexed like the variables they were built for)."""
  owners = {}
  for kind in ("_momentums", "_velocities", "_velocity_hats", "_accumulators"):
    slots = getattr(optimizer, kind, None) or []
    for var in variables:
      index = optimizer._index_dict.get(optimizer._var_key(var))
      if index is not None and index < len(slots):
        owners[slots[index].ref()] = var
  return owners


def _tables(model, parent: Parent, data: prepare_lib.PreparedData) -> dict:
  """Embedding table ref -> (parent vocabulary, this run's vocabulary)."""
  tables = {model.user_tower.id_embedding.embeddings.ref(): (parent.vocab.user_vocab,
                                                             data.user_vocab),
            model.item_tower.id_embedding.embeddings.ref(): (parent.vocab.item_vocab,
                                                             data.item_vocab)}
  for tower, theirs, table in ((model.user_tower, parent.vocab.user_specs, data.user_features),
                               (model.item_tower, parent.vocab.item_specs, data.item_features)):
    parents = {s.name: s.vocab for s in theirs}
    for spec in table.specs:
      tables[tower.features.table(spec.name).ref()] = (parents[spec.name], spec.vocab)
  return tables


def _extend_rows(value: np.ndarray, fresh: np.ndarray, old: Vocabulary, new: Vocabulary,
                 copy_oov: bool) -> np.ndarray:
  """A parent table (rows of ``old``) as a table of ``new``: old rows as they were, new rows
  a copy of the OOV row the token hashed to in the parent (weights) or ``fresh`` (slots)."""
  if not np.array_equal(new.tokens[:len(old.tokens)], old.tokens):
    raise ValueError("a warm-started vocabulary must extend its parent's")
  added = new.tokens[len(old.tokens):]
  tail = value[old.lookup(added)] if copy_oov else fresh[len(old):]
  return np.concatenate([value, tail.astype(value.dtype)], axis=0)


def _ring(reader, prefix: str, fresh: dict) -> dict:
  """A CBNS ring buffer (queue or query memory) of the parent resized to this run's: the
  newest entries that fit, oldest first from slot 0."""
  value = {name: reader.get_tensor(f"{prefix}/{name}{_VALUE}")
           for name in ("embeddings", "ids", "log_q", "count")}
  size, new_size = len(value["ids"]), len(fresh["ids"])
  if size == new_size:
    return value
  filled = int(min(value["count"], size))
  order = (int(value["count"]) - filled + np.arange(filled)) % size
  keep = order[max(filled - new_size, 0):]
  out = {name: fresh[name].copy() for name in ("embeddings", "ids", "log_q")}
  for name in out:
    out[name][:len(keep)] = value[name][keep]
  out["count"] = np.asarray(len(keep), np.int64)
  return out


def _rehash_frequency(reader, estimator: StreamingFrequencyEstimator,
                      parent_vocab: Vocabulary) -> dict:
  """The parent's streaming estimate over this run's buckets when their count changed.

  Each old item's gap is its least-collided estimate in the parent (the longest over the
  hashes); a bucket here then gets the gap of the combined arrivals of the items it holds
  (1 / sum of 1 / gap) and the latest of their last sightings. Buckets holding only new
  items keep the fresh values.
  """
  gap = reader.get_tensor(f"model/frequency/gap{_VALUE}")
  last = reader.get_tensor(f"model/frequency/last_seen{_VALUE}")
  hashes, buckets = gap.shape
  ids = tf.constant(np.arange(len(parent_vocab)), tf.int64)
  was = StreamingFrequencyEstimator(buckets, hashes)._buckets(ids).numpy()
  now = estimator._buckets(ids).numpy()
  rows = np.arange(hashes)[:, None]
  item_gap = gap[rows, was].max(axis=0)
  item_last = last[rows, was].min(axis=0)
  new_gap = estimator.gap.numpy().copy()
  new_last = estimator.last_seen.numpy().copy()
  for h in range(hashes):
    seen = item_last > 0
    rate = np.bincount(now[h][seen], 1.0 / item_gap[seen], minlength=new_gap.shape[1])
    new_gap[h][rate > 0] = 1.0 / rate[rate > 0]
    np.maximum.at(new_last[h], now[h][seen], item_last[seen])
  return {f"model/frequency/gap{_VALUE}": new_gap.astype(np.float32),
          f"model/frequency/last_seen{_VALUE}": new_last}


def apply(model, optimizer, parent: Parent, data: prepare_lib.PreparedData,
          config: Config) -> dict:
  """Fills the model and optimizer (built for ``data`` and ``config``, every slot created)
  from the parent run; returns what was carried, for metrics.json."""
  variables = variable_paths(model=model, optimizer=optimizer)
  best = tf.train.load_checkpoint(parent.best)
  latest = tf.train.load_checkpoint(parent.latest) if parent.latest else best
  tables = _tables(model, parent, data)
  owners = _slot_owners(optimizer, model.trainable_variables)
  same_optimizer = parent.config.train.optimizer == config.train.optimizer
  overrides: dict = {}
  fresh_ring = lambda prefix: {name: variables[f"{prefix}/{name}{_VALUE}"].numpy()
                               for name in ("embeddings", "ids", "log_q")}
  for prefix in ("model/task/queue", "model/task/query_memory"):
    if f"{prefix}/ids{_VALUE}" in variables and latest.has_tensor(f"{prefix}/ids{_VALUE}"):
      ring = _ring(latest, prefix, fresh_ring(prefix))
      overrides.update({f"{prefix}/{name}{_VALUE}": v for name, v in ring.items()})
  frequency = getattr(model, "frequency", None)
  gap_key = f"model/frequency/gap{_VALUE}"
  rehashed = False
  if (isinstance(frequency, StreamingFrequencyEstimator) and latest.has_tensor(gap_key)
      and tuple(latest.get_variable_to_shape_map()[gap_key]) != tuple(frequency.gap.shape)):
    if latest.get_variable_to_shape_map()[gap_key][0] != frequency.num_hashes:
      raise ConfigError(f"--init_from={parent.path}: --frequency_hashes is "
                        f"{frequency.num_hashes} here but "
                        f"{parent.config.loss.frequency_hashes} in the parent run")
    overrides.update(_rehash_frequency(latest, frequency, parent.vocab.item_vocab))
    rehashed = True

  carried, fresh = [], []
  for key, var in sorted(variables.items()):
    if key.startswith(_NOT_CARRIED):
      continue
    reader = best if key.startswith(_FROM_BEST) else latest
    if key.startswith("optimizer/_variables/") and not same_optimizer:
      fresh.append(key)
      continue
    if key in overrides:
      var.assign(overrides[key])
      carried.append(key)
      continue
    if not reader.has_tensor(key):
      fresh.append(key)   # e.g. a queue the parent did not have
      continue
    value = reader.get_tensor(key)
    owner = owners.get(var.ref())   # a slot's table is its variable's
    table = tables.get(var.ref() if owner is None else owner.ref())
    if table is not None and value.shape != tuple(var.shape):
      value = _extend_rows(value, var.numpy(), table[0], table[1], var.ref() in tables)
    if value.shape != tuple(var.shape):
      raise ConfigError(f"--init_from={parent.path}: {key.removesuffix(_VALUE)} has shape "
                        f"{list(value.shape)} in the parent run but {list(var.shape)} here; "
                        f"a warm start needs the parent's model shapes")
    var.assign(value)
    carried.append(key)
  summary = {
      "new_users": len(data.user_vocab) - len(parent.vocab.user_vocab),
      "new_items": len(data.item_vocab) - len(parent.vocab.item_vocab),
      "variables_carried": len(carried), "variables_fresh": [k.removesuffix(_VALUE)
                                                              for k in fresh],
      "optimizer_slots": "carried" if same_optimizer else
                         f"fresh (--optimizer changed from {parent.config.train.optimizer})",
      "frequency_rehashed": rehashed,
  }
  logging.info("warm start from %s: %d new users, %d new items, %d variables carried, "
               "fresh: %s", parent.path, summary["new_users"], summary["new_items"],
               len(carried), summary["variables_fresh"] or "none")
  return summary



def save_init(trainer, workdir: str) -> None:
  """Keeps the warm-started state (``checkpoints/warm_init``): the refit's starting point,
  as the seed's initialisation is a cold run's."""
  tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer).write(
      os.path.join(Workdir(workdir).checkpoints, INIT))


def restore_init(trainer) -> None:
  """Starts a fresh refit (no checkpoints of its own yet) from ``checkpoints/warm_init``."""
  path = os.path.join(Workdir(trainer.wd.root).checkpoints, INIT)
  if trainer.manager.checkpoints:
    return   # the refit resumes its own checkpoints
  if not os.path.exists(path + ".index"):
    raise UserError(f"{path} not found: this warm-started run lost its initial state; "
                    f"train again into a new --workdir")
  tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer).read(
      path).assert_existing_objects_matched()
  logging.info("refit starts from the warm-started state %s", path)
