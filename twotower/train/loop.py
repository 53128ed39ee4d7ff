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
from twotower.model.frequency import StreamingFrequencyEstimator
from twotower.model.mixed_negatives import DISTRIBUTIONS as MIXED_DISTRIBUTIONS
from twotower.train.drift import DriftMonitor
from twotower.train.optimizers import OPTIMIZERS, make_optimizer
from twotower.train.stability import DivergenceError, DivergenceGuard
from twotower.workdir import Workdir


DISTRIBUTIONS = ("none", "mirrored", "multi_worker")


def _number(variable):
  """A variable's value as a Python number; int()/float() of a distributed variable (as
  created under a strategy's scope) raise TypeError."""
  return variable.numpy().item()


def validate_config(config: Config) -> None:
  """Flag errors up front, each naming its flag, before minutes of data loading."""
  t, l, d, m = config.train, config.loss, config.data, config.model
  not_streaming = l.frequency != "streaming"   # the frequency_* flags only matter there
  max_hashes = len(StreamingFrequencyEstimator._MULTIPLIERS)  # pylint: disable=protected-access
  checks = [
      (t.batch_size > 0, f"--batch_size must be positive, got {t.batch_size}"),
      (t.epochs > 0, f"--epochs must be positive, got {t.epochs}"),
      (t.step_limit >= 0, f"--step_limit must be >= 0, got {t.step_limit}"),
      (t.learning_rate > 0 and np.isfinite(t.learning_rate),
       f"--learning_rate must be positive, got {t.learning_rate}"),
      (t.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}"),
      (t.global_clipnorm >= 0, f"--global_clipnorm must be >= 0, got {t.global_clipnorm}"),
      (min(t.clippy_variable_relative_threshold, t.clippy_accumulator_relative_threshold,
           t.clippy_absolute_threshold) >= 0,
       "--clippy_variable_relative_threshold, --clippy_accumulator_relative_threshold and "
       "--clippy_absolute_threshold must be >= 0"),
      (t.patience >= 0, f"--patience must be >= 0, got {t.patience}"),
      (t.lr_plateau_patience >= 0,
       f"--lr_plateau_patience must be >= 0, got {t.lr_plateau_patience}"),
      (0 < t.lr_plateau_factor <= 1,
       f"--lr_plateau_factor must be in (0, 1], got {t.lr_plateau_factor}"),
      (t.checkpoint_every_steps >= 0,
       f"--checkpoint_every_steps must be >= 0, got {t.checkpoint_every_steps}"),
      (t.max_recoveries >= 0, f"--max_recoveries must be >= 0, got {t.max_recoveries}"),
      (0 < t.recovery_lr_factor <= 1,
       f"--recovery_lr_factor must be in (0, 1], got {t.recovery_lr_factor}"),
      (t.divergence_spike_factor > 1,
       f"--divergence_spike_factor must be > 1, got {t.divergence_spike_factor}"),
      (t.distribution in DISTRIBUTIONS,
       f"--distribution must be one of {DISTRIBUTIONS}, got {t.distribution!r}"),
      (l.temperature > 0 and np.isfinite(l.temperature),
       f"--temperature must be positive, got {l.temperature}"),
      (l.queue_size >= -1,
       f"--queue_size must be -1 (auto), 0 (off) or positive, got {l.queue_size}"),
      (l.queue_size <= 0 or l.queue_size >= t.batch_size,
       f"--queue_size ({l.queue_size}) must be at least --batch_size ({t.batch_size}), or 0 "
       f"for in-batch only"),
      (l.query_memory_size >= -1,
       f"--query_memory_size must be -1 (the queue's size), 0 (off) or positive, got "
       f"{l.query_memory_size}"),
      (l.query_memory_size <= 0 or l.queue_size != 0,
       "--query_memory_size needs the item queue (--queue_size != 0): without it the batch's "
       "items meet more users than the users meet items, and training degrades "
       "(experiments/RESULTS.md)"),
      (l.queue_warmup_steps >= 0,
       f"--queue_warmup_steps must be >= 0, got {l.queue_warmup_steps}"),
      (l.queue_warmup_drift >= 0,
       f"--queue_warmup_drift must be >= 0, got {l.queue_warmup_drift}"),
      (l.queue_warmup_drift == 0 or t.drift_every_steps > 0,
       "--queue_warmup_drift needs the drift monitor: set --drift_every_steps > 0"),
      (t.drift_every_steps >= 0,
       f"--drift_every_steps must be >= 0, got {t.drift_every_steps}"),
      (t.drift_sample_size > 0,
       f"--drift_sample_size must be positive, got {t.drift_sample_size}"),
      (l.frequency in ("static", "streaming"),
       f"--frequency must be 'static' or 'streaming', got {l.frequency!r}"),
      (not_streaming or l.frequency_buckets >= 0,
       f"--frequency_buckets must be >= 0, got {l.frequency_buckets}"),
      (not_streaming or 1 <= l.frequency_hashes <= max_hashes,
       f"--frequency_hashes must be in [1, {max_hashes}], got {l.frequency_hashes}"),
      (not_streaming or 0 < l.frequency_learning_rate <= 1,
       f"--frequency_learning_rate must be in (0, 1], got {l.frequency_learning_rate}"),
      (l.mixed_negatives >= 0, f"--mixed_negatives must be >= 0, got {l.mixed_negatives}"),
      (l.mixed_negatives_distribution in MIXED_DISTRIBUTIONS,
       f"--mixed_negatives_distribution must be one of {MIXED_DISTRIBUTIONS}, got "
       f"{l.mixed_negatives_distribution!r}"),
      (d.history_length > 0, f"--history_length must be positive, got {d.history_length}"),
      (0 <= d.valid_fraction < 1, f"--valid_fraction must be in [0, 1), got {d.valid_fraction}"),
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
      (m.id_embedding_dim > 0, f"--id_embedding_dim must be positive, got {m.id_embedding_dim}"),
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
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  metric = t.early_stopping_metric
  names = {f"{kind}@{k}" for kind in ("recall", "ndcg", "hit_rate") for k in t.eval_ks} | {"mrr"}
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
    var = lambda value, dtype: tf.Variable(value, dtype=dtype, trainable=False)
    self.epoch = var(0, tf.int64)                  # epochs completed
    self.batches_done = var(0, tf.int64)           # batches consumed in the current epoch
    self.best = var(-np.inf, tf.float64)
    self.best_epoch = var(-1, tf.int64)
    self.epochs_since_best = var(0, tf.int64)
    self.stopped = var(False, tf.bool)
    self.recoveries = var(0, tf.int64)


def build_model(data: prepare_lib.PreparedData, config: Config):
  """(retrieval model, optimizer) as the config asks, compiled, with every weight and
  optimizer slot created, ready for ``tf.function(model.train_step)``.

  The weights and slots exist before tracing so that the step can apply its gradients
  inside a tf.cond (skipped when they are not finite). Under a distribution strategy, call
  it in the strategy's scope.
  """
  t = config.train
  model = retrieval.build_retrieval_model(data, config)
  optimizer = make_optimizer(
      t.optimizer, t.learning_rate, t.global_clipnorm,
      clippy_thresholds={
          "variable_relative_threshold": t.clippy_variable_relative_threshold,
          "accumulator_relative_threshold": t.clippy_accumulator_relative_threshold,
          "absolute_threshold": t.clippy_absolute_threshold})
  model.compile(optimizer=optimizer)
  sample = pipeline.training_dataset(data, batch_size=2, seed=t.seed,
                                     history_length=config.data.history_length)
  model.compute_loss(next(iter(sample)))
  optimizer.build(model.trainable_variables)
  return model, optimizer


class Trainer:
  """Owns the model, optimizer, checkpoints and logs of one training run."""

  def __init__(self, config: Config, workdir: str, data: prepare_lib.PreparedData):
    self.config, self.data, self.wd = config, data, Workdir(workdir)
    t = config.train
    tf_keras.utils.set_random_seed(t.seed)
    self.strategy = make_strategy(t.distribution)
    self.distributed = self.strategy.num_replicas_in_sync > 1
    with self.strategy.scope():
      self.model, self.optimizer = build_model(data, config)
    self.state = _LoopState()
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          state=self.state)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.wd.checkpoints,
                                              max_to_keep=3)
    self.best_checkpoint = tf.train.Checkpoint(model=self.model)
    self.log = _load_metrics(self.wd, config, data)
    # Replicas need equal slices (the global batch splits evenly): the last partial batch
    # of an epoch is left out there; the order is reshuffled every epoch.
    self.steps_per_epoch = pipeline.steps_per_epoch(data, t.batch_size, self.distributed)
    self.num_train = int((data.events.split == splits.TRAIN).sum())
    self.train_step = tf.function(self._replicated_step, reduce_retracing=True)
    self.writer = tf.summary.create_file_writer(self.wd.tensorboard)
    self.guard = DivergenceGuard(t.divergence_spike_factor)
    # One encoder for the whole run: its traced functions are reused every epoch instead of
    # retraced (TensorFlow warns about functions created in a loop).
    self.encoder = Encoder(self.model, data)
    self.drift = (DriftMonitor(self.encoder, data.corpus_ids(),
                               t.drift_sample_size, t.seed)
                  if t.drift_every_steps else None)

  def _replicated_step(self, batch):
    out = self.strategy.run(self.model.train_step, args=(batch,))
    return {"loss": self.strategy.reduce("SUM", out["loss"], axis=None),
            # Each replica's norm is of its own share of the gradient. Their mean over all
            # workers is finite only when every replica's is, so every worker's divergence
            # guard takes the same decision (one recovering alone would hang the others).
            "grad_norm": self.strategy.reduce("MEAN", out["grad_norm"], axis=None)}

  # -- checkpoints -----------------------------------------------------------------------
  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint; a corrupt one falls back to the previous."""
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        logging.info("restored %s (epoch %d, batch %d)", path, int(self.state.epoch),
                     int(self.state.batches_done))
        return True
      except (tf.errors.OpError, ValueError, AssertionError) as e:
        logging.warning("checkpoint %s is unreadable (%s); trying the previous one", path,
                        str(e).splitlines()[0])
    return False

  def save(self) -> None:
    self.manager.save(checkpoint_number=self._step())
    fileio.atomic_write_json(self.wd.metrics, self.log)

  # -- the loop --------------------------------------------------------------------------
  def run(self) -> dict:
    t = self.config.train
    if self.restore_latest():
      self.log["epochs"] = [e for e in self.log["epochs"]
                            if e["epoch"] < int(self.state.epoch)]
    else:
      self.save()    # step 0: what a divergence before the first checkpoint restores
    while (int(self.state.epoch) < t.epochs and not bool(self.state.stopped)
           and not self._step_limit_reached()):
      self._epoch()
    return self._finish()

  def _epoch(self) -> None:
    t, epoch = self.config.train, int(self.state.epoch)
    progbar = tf_keras.utils.Progbar(self.steps_per_epoch, verbose=1 if t.progress else 0,
                                     stateful_metrics=["loss"])
    progbar.update(int(self.state.batches_done))
    started, losses, seen = time.time(), [], 0
    while int(self.state.batches_done) < self.steps_per_epoch:
      skip = int(self.state.batches_done)
      dataset = pipeline.training_dataset(
          self.data, batch_size=t.batch_size, history_length=self.config.data.history_length,
          seed=t.seed, epoch=epoch, id_dropout=self.config.model.id_dropout,
          skip_batches=skip, drop_remainder=self.distributed)
      if self.distributed:
        dataset = self.strategy.experimental_distribute_dataset(dataset)
      diverged = False
      for batch in dataset:
        out = self.train_step(batch)
        loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
        reason = self.guard.check(loss, grad_norm)
        if reason:
          self._recover(reason)
          diverged = True
          break
        losses.append(loss)
        seen += min(t.batch_size, self.num_train - int(self.state.batches_done) * t.batch_size)
        self.state.batches_done.assign_add(1)
        step = self._step()
        progbar.add(1, [("loss", float(np.mean(losses[-50:])))])
        if step % 10 == 0:
          with self.writer.as_default(step=step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/grad_norm", grad_norm)
        if self.drift is not None and step % t.drift_every_steps == 0:
          self._measure_drift(step)
        if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
          self.save()
        if self._step_limit_reached():
          break
      if not diverged:
        break
    self._end_epoch(epoch, losses, seen, time.time() - started)

  def _measure_drift(self, step: int) -> None:
    """Logs the embedding drift; with --queue_warmup_drift, switches the queue on."""
    drift = self.drift.measure()
    if drift is None:
      return
    with self.writer.as_default(step=step):
      tf.summary.scalar("train/embedding_drift", drift)
    self.log.setdefault("drift", []).append({"step": step, "drift": drift})
    task, threshold = self.model.task, self.config.loss.queue_warmup_drift
    if threshold > 0 and task.queue is not None and not bool(_number(task.queue_enabled)):
      if drift < threshold:
        task.queue_enabled.assign(True)
        self.log["queue_enabled_at_step"] = step
        logging.info("embedding drift %.4g < --queue_warmup_drift=%g at step %d: queue on",
                     drift, threshold, step)

  def _recover(self, reason: str) -> None:
    """Back to the last good checkpoint, a lower learning rate, past the bad batch."""
    t = self.config.train
    bad_epoch, bad_batch = int(self.state.epoch), int(self.state.batches_done)
    bad_step = self._step()
    recoveries = int(self.state.recoveries) + 1
    if recoveries > t.max_recoveries:
      raise DivergenceError(
          f"training diverged at step {bad_step} ({reason}) after {recoveries - 1} "
          f"recoveries (--max_recoveries={t.max_recoveries}); lower --learning_rate or set "
          f"--global_clipnorm / --optimizer=clippy_adagrad")
    lr = _number(self.optimizer.learning_rate) * t.recovery_lr_factor
    if not self.restore_latest():
      raise DivergenceError(f"training diverged at step {bad_step} ({reason}) and no "
                            f"checkpoint could be restored")
    restored_step = self._step()
    self.optimizer.learning_rate.assign(lr)
    # Skip the window: continue after the offending batch of the epoch it happened in.
    self.state.epoch.assign(bad_epoch)
    self.state.batches_done.assign(bad_batch + 1)
    self.state.recoveries.assign(recoveries)
    self.guard.reset()
    event = {"step": bad_step, "epoch": bad_epoch, "batch": bad_batch, "reason": reason,
             "restored_step": restored_step, "learning_rate": lr}
    self.log.setdefault("divergence_events", []).append(event)
    logging.warning("divergence at step %d (%s): restored step %d, learning rate -> %g, "
                    "skipping to batch %d", bad_step, reason, restored_step, lr, bad_batch + 1)
    self.save()

  def _end_epoch(self, epoch, losses, seen, elapsed) -> None:
    t = self.config.train
    valid = split_metrics(self.model, self.data, splits.VALID, self.config, self.encoder)
    record = {"epoch": epoch, "step": self._step(),
              "loss": float(np.mean(losses)) if losses else None,
              "examples_per_second": seen / max(elapsed, 1e-9),
              "learning_rate": _number(self.optimizer.learning_rate), "valid": valid}
    _early_stopping(record, self.state, self.optimizer, self.best_checkpoint, self.wd, t)
    self.log["epochs"].append(record)
    with self.writer.as_default(step=self._step()):
      for name, value in valid.items():
        tf.summary.scalar(f"valid/{name}", value)
      tf.summary.scalar("train/examples_per_second", record["examples_per_second"])
      tf.summary.scalar("train/learning_rate", record["learning_rate"])
    if int(self.state.batches_done) >= self.steps_per_epoch:
      self.state.epoch.assign_add(1)
      self.state.batches_done.assign(0)
    self.save()
    shown = {k: round(v, 4) for k, v in valid.items()
             if k in (t.early_stopping_metric, "ndcg@20")}
    logging.info("epoch %d: loss %s, %.0f examples/s, valid %s", epoch, record["loss"],
                 record["examples_per_second"], shown)

  def _finish(self) -> dict:
    steps = self._step()   # before the best model (and its step) is read
    if not os.path.exists(self.wd.best + ".index"):   # stopped before any validation
      self.best_checkpoint.write(self.wd.best)
    self.best_checkpoint.read(self.wd.best).expect_partial()
    self.log["final"] = {
        "best_epoch": int(self.state.best_epoch),
        "valid": split_metrics(self.model, self.data, splits.VALID, self.config, self.encoder),
        "test": split_metrics(self.model, self.data, splits.TEST, self.config, self.encoder),
        "most_popular_test": most_popular_metrics(self.data, splits.TEST, self.config),
        "steps": steps,
        "recoveries": int(self.state.recoveries),
    }
    fileio.atomic_write_json(self.wd.metrics, self.log)
    self.writer.flush()
    return self.log

  def _step(self) -> int:
    return _number(self.optimizer.iterations)

  def _step_limit_reached(self) -> bool:
    limit = self.config.train.step_limit
    return limit > 0 and self._step() >= limit


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy a --distribution value names.

  multi_worker reads the cluster and this process's task from TF_CONFIG. It configures the
  process's collective ops, which TensorFlow only allows before its runtime has started:
  call it before any other TensorFlow op.
  """
  if name == "none":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name != "multi_worker":
    raise ValueError(f"--distribution must be one of {DISTRIBUTIONS}, got {name!r}")
  usage = ("--distribution=multi_worker needs TF_CONFIG, e.g. '{\"cluster\": {\"worker\": "
           "[\"host0:12345\", \"host1:12345\"]}, \"task\": {\"type\": \"worker\", "
           "\"index\": 0}}' (see README.md)")
  try:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().as_dict()
    task = (resolver.task_type, resolver.task_id)
  except (ValueError, TypeError, AttributeError) as e:   # not JSON, or not TF_CONFIG's shape
    raise ValueError(f"{usage}; TF_CONFIG is not valid: {e}") from None
  if not jobs:
    raise ValueError(f"{usage}; TF_CONFIG is unset or has no cluster")
  if task[0] not in ("chief", "worker") or not 0 <= task[1] < len(jobs.get(task[0], ())):
    raise ValueError(f"{usage}; TF_CONFIG's task (type {task[0]!r}, index {task[1]}) is not "
                     f"a chief or worker of its cluster {jobs}")
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  except RuntimeError as e:
    if "startup" not in str(e):
      raise
    raise RuntimeError("--distribution=multi_worker: the strategy must be created before any "
                       f"other TensorFlow op runs in the process ({e})") from e


def train(config: Config, workdir: str, data: Optional[prepare_lib.PreparedData] = None) -> dict:
  """Trains (or resumes) the retrieval model in ``workdir``; returns the metrics log."""
  validate_config(config)
  wd = Workdir(workdir)
  os.makedirs(wd.root, exist_ok=True)
  if os.path.exists(wd.config):
    saved = Config.load(wd.config)
    if saved.to_json() != config.to_json():
      logging.warning("%s differs from this run's flags; the new config is used and saved",
                      wd.config)
  fileio.atomic_write_bytes(wd.config, config.to_json().encode())
  if data is None:
    data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  data.save_vocab(wd.vocab)
  return Trainer(config, workdir, data).run()


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
    new_lr = _number(optimizer.learning_rate) * t.lr_plateau_factor
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
