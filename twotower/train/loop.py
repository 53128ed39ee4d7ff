"""The retrieval training loop.

Epochs over shuffled batches with a Keras progress bar and TensorBoard scalars; after each
epoch, exact validation metrics, a checkpoint (model, optimizer, queue, loop state), early
stopping and a reduce-on-plateau learning rate. Rerunning the same command resumes from the
latest checkpoint. At the end the best epoch's weights are restored, scored on the test split
and kept as ``checkpoints/best`` for the index, export and ranking jobs.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from twotower import evaluate as evaluate_lib
from twotower import fileio
from twotower.config import Config
from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.model import retrieval
from twotower.model.encoding import Encoder
from twotower.train.optimizers import make_optimizer
from twotower.workdir import Workdir


def validate_config(config: Config) -> None:
  """Flag errors up front, each naming its flag."""
  t, l, d = config.train, config.loss, config.data
  checks = [
      (t.batch_size > 0, f"--batch_size must be positive, got {t.batch_size}"),
      (t.epochs > 0, f"--epochs must be positive, got {t.epochs}"),
      (t.step_limit >= 0, f"--step_limit must be >= 0, got {t.step_limit}"),
      (l.temperature > 0, f"--temperature must be positive, got {l.temperature}"),
      (l.queue_size >= -1, f"--queue_size must be -1 (auto), 0 (off) or positive, got {l.queue_size}"),
      (l.queue_size <= 0 or l.queue_size >= t.batch_size,
       f"--queue_size ({l.queue_size}) must be at least --batch_size ({t.batch_size}), or 0 for in-batch only"),
      (l.queue_warmup_steps >= 0, f"--queue_warmup_steps must be >= 0, got {l.queue_warmup_steps}"),
      (d.history_length > 0, f"--history_length must be positive, got {d.history_length}"),
      (config.model.embedding_dim > 0, f"--embedding_dim must be positive, got {config.model.embedding_dim}"),
      (all(k > 0 for k in t.eval_ks), f"--eval_ks must all be positive, got {list(t.eval_ks)}"),
      (0 <= config.model.id_dropout < 1, f"--id_dropout must be in [0, 1), got {config.model.id_dropout}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  metric = t.early_stopping_metric
  names = {f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate") for k in t.eval_ks} | {"mrr"}
  if metric not in names:
    raise ValueError(f"--early_stopping_metric must be one of {sorted(names)}, got {metric!r}")


def split_metrics(model, data: prepare_lib.PreparedData, split_code: int, config: Config,
                  encoder: Optional[Encoder] = None) -> dict:
  """Exact full-corpus metrics of the model on one split."""
  encoder = encoder or Encoder(model, data)
  queries = prepare_lib.eval_queries(data, split_code, config.data.history_length)
  if len(queries.user) == 0:
    return {"num_users": 0}
  return evaluate_lib.retrieval_metrics(
      encoder.users(queries.user, queries.history), encoder.items(),
      queries.targets, queries.exclude, ks=config.train.eval_ks)


def most_popular_metrics(data: prepare_lib.PreparedData, split_code: int, config: Config) -> dict:
  queries = prepare_lib.eval_queries(data, split_code, config.data.history_length)
  return evaluate_lib.most_popular_metrics(data.train_item_counts(), queries.targets,
                                           queries.exclude, ks=config.train.eval_ks)


class _LoopState(tf.Module):
  """What the loop must remember across a restart, checkpointed with the model."""

  def __init__(self):
    super().__init__()
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)          # epochs completed
    self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.epochs_since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.stopped = tf.Variable(False, trainable=False)


def train(config: Config, workdir: str, data: Optional[prepare_lib.PreparedData] = None) -> dict:
  """Trains (or resumes) the retrieval model in ``workdir``; returns the final metrics."""
  validate_config(config)
  wd = Workdir(workdir)
  os.makedirs(wd.root, exist_ok=True)
  fileio.atomic_write_bytes(wd.config, config.to_json().encode())
  if data is None:
    data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  data.save_vocab(wd.vocab)

  tf_keras.utils.set_random_seed(config.train.seed)
  model = retrieval.build_retrieval_model(data, config)
  optimizer = make_optimizer(config.train.optimizer, config.train.learning_rate)
  model.compile(optimizer=optimizer)
  state = _LoopState()
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, state=state)
  manager = tf.train.CheckpointManager(checkpoint, wd.checkpoints, max_to_keep=2)
  best_checkpoint = tf.train.Checkpoint(model=model)
  metrics_log = _load_metrics(wd, config, data)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).expect_partial()
    logging.info("resumed from %s (epoch %d)", manager.latest_checkpoint, int(state.epoch))
    metrics_log["epochs"] = [e for e in metrics_log["epochs"] if e["epoch"] < int(state.epoch)]

  steps_per_epoch = pipeline.steps_per_epoch(data, config.train.batch_size)
  train_step = tf.function(model.train_step, reduce_retracing=True)
  writer = tf.summary.create_file_writer(wd.tensorboard)
  t = config.train

  while (int(state.epoch) < t.epochs and not bool(state.stopped)
         and not _step_limit_reached(optimizer, t)):
    epoch = int(state.epoch)
    dataset = pipeline.training_dataset(
        data, batch_size=t.batch_size, history_length=config.data.history_length,
        seed=t.seed, epoch=epoch, id_dropout=config.model.id_dropout)
    progbar = tf_keras.utils.Progbar(steps_per_epoch, verbose=1 if t.progress else 0,
                                     stateful_metrics=["loss"])
    started, losses, seen = time.time(), [], 0
    for batch in dataset:
      out = train_step(batch)
      loss = float(out["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {loss} at step {int(optimizer.iterations)}; lower "
            f"--learning_rate (now {float(optimizer.learning_rate):g})")
      losses.append(loss)
      seen += int(tf.shape(batch["item"]["item_id"])[0])
      step = int(optimizer.iterations)
      progbar.add(1, [("loss", float(np.mean(losses[-50:])))])
      if step % 10 == 0:
        with writer.as_default(step=step):
          tf.summary.scalar("train/loss", loss)
      if _step_limit_reached(optimizer, t):
        break
    elapsed = time.time() - started

    valid = split_metrics(model, data, splits.VALID, config)
    record = {"epoch": epoch, "step": int(optimizer.iterations), "loss": float(np.mean(losses)),
              "examples_per_second": seen / max(elapsed, 1e-9),
              "learning_rate": float(optimizer.learning_rate), "valid": valid}
    _early_stopping(record, state, optimizer, best_checkpoint, wd, t)
    metrics_log["epochs"].append(record)
    with writer.as_default(step=int(optimizer.iterations)):
      for name, value in valid.items():
        tf.summary.scalar(f"valid/{name}", value)
      tf.summary.scalar("train/examples_per_second", record["examples_per_second"])
      tf.summary.scalar("train/learning_rate", record["learning_rate"])
    state.epoch.assign_add(1)
    manager.save(checkpoint_number=int(state.epoch))
    fileio.atomic_write_json(wd.metrics, metrics_log)
    logging.info("epoch %d: loss %.4f, %.0f examples/s, valid %s", epoch, record["loss"],
                 record["examples_per_second"],
                 {k: round(v, 4) for k, v in valid.items() if k in (t.early_stopping_metric, "ndcg@20")})

  if not os.path.exists(wd.best + ".index"):     # step limit hit before any validation
    best_checkpoint.write(wd.best)
  best_checkpoint.read(wd.best).expect_partial()
  metrics_log["final"] = {
      "best_epoch": int(state.best_epoch),
      "valid": split_metrics(model, data, splits.VALID, config),
      "test": split_metrics(model, data, splits.TEST, config),
      "most_popular_test": most_popular_metrics(data, splits.TEST, config),
      "steps": int(optimizer.iterations),
  }
  fileio.atomic_write_json(wd.metrics, metrics_log)
  writer.flush()
  return metrics_log


def _step_limit_reached(optimizer, t) -> bool:
  return t.step_limit > 0 and int(optimizer.iterations) >= t.step_limit


def _early_stopping(record, state, optimizer, best_checkpoint, wd, t) -> None:
  value = record["valid"].get(t.early_stopping_metric, -np.inf)
  if value > float(state.best):
    state.best.assign(value)
    state.best_epoch.assign(record["epoch"])
    state.epochs_since_best.assign(0)
    best_checkpoint.write(wd.best)
    record["best"] = True
    return
  state.epochs_since_best.assign_add(1)
  since = int(state.epochs_since_best)
  if t.lr_plateau_patience and since % t.lr_plateau_patience == 0:
    new_lr = float(optimizer.learning_rate) * t.lr_plateau_factor
    optimizer.learning_rate.assign(new_lr)
    logging.info("no %s improvement for %d epochs: learning rate -> %g",
                 t.early_stopping_metric, since, new_lr)
  if since >= t.patience:
    logging.info("early stopping: best %s %.4f at epoch %d", t.early_stopping_metric,
                 float(state.best), int(state.best_epoch))
    state.stopped.assign(True)


def _load_metrics(wd: Workdir, config: Config, data) -> dict:
  if os.path.exists(wd.metrics):
    log = fileio.read_json(wd.metrics)
    log.setdefault("epochs", [])
    log.pop("final", None)
    return log
  return {"dataset": data.name, "data": data.stats, "epochs": []}
