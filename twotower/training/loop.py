"""The retrieval trainer: what the training skeleton (train/runner.py) runs for the towers.

It supplies shuffled batches, the replicated step (under a tf.distribute strategy when asked)
and exact full-corpus validation metrics of a fixed sample of --eval_users validation users
(each user against the whole corpus); the checkpoints, resume, guard, early stopping and
plateau schedule are the skeleton's. At the end the best evaluation's weights are restored,
scored on the test split (all users, or --test_users of them) and kept as
``checkpoints/best`` for the index, export and ranking jobs; their validation figures are
the best evaluation's, not recomputed. The workdir-level job (config, data, vocabularies) is jobs/train.py.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras
from absl import logging

from twotower import config as config_lib
from twotower import evaluate as evaluate_lib
from twotower.config import Config
from twotower.data import pipeline, splits
from twotower.data import prepare as prepare_lib
from twotower.errors import ConfigError
from twotower.model import retrieval
from twotower.model.encoding import Encoder
from twotower.training import runner
from twotower.training.drift import DriftMonitor
from twotower.training.optimizers import make_optimizer
from twotower.workdir import Workdir


def split_queries(data: prepare_lib.PreparedData, split_code: int,
                  config: Config) -> prepare_lib.EvalQueries:
  """The queries a split is measured on: a fixed sample of at most --eval_users validation
  or --test_users test users (0: all of them)."""
  t = config.train
  max_users = t.eval_users if split_code == splits.VALID else t.test_users
  return prepare_lib.eval_queries(data, split_code, config.data.history_length, max_users)


def split_metrics(model, data: prepare_lib.PreparedData, split_code: int, config: Config,
                  encoder: Optional[Encoder] = None,
                  queries: Optional[prepare_lib.EvalQueries] = None) -> dict:
  """Exact full-corpus metrics of the model on one split's queries (``split_queries``
  unless given), and how many of the split's users they cover; with the cold and warm
  slices (``cold_slices``)."""
  encoder = encoder or Encoder(model, data)
  queries = queries if queries is not None else split_queries(data, split_code, config)
  if len(queries.user) == 0:
    return {"num_users": 0, "num_users_in_split": queries.split_users}
  return {**evaluate_lib.retrieval_metrics(
              encoder.users(queries.user, queries.history), encoder.items(),
              queries.targets, queries.exclude, ks=config.train.eval_ks,
              slices=cold_slices(data)),
          "num_users_in_split": queries.split_users}


def most_popular_metrics(data: prepare_lib.PreparedData, split_code: int, config: Config,
                         queries: Optional[prepare_lib.EvalQueries] = None) -> dict:
  queries = queries if queries is not None else split_queries(data, split_code, config)
  return {**evaluate_lib.most_popular_metrics(data.train_item_counts(), queries.targets,
                                              queries.exclude, ks=config.train.eval_ks,
                                              slices=cold_slices(data)),
          "num_users_in_split": queries.split_users}


def cold_slices(data: prepare_lib.PreparedData) -> dict:
  """The cold items (no event in ``data``'s training split: the data the evaluated model
  trained on, a refit's ``refit.refit_data``) and the warm ones, as evaluation slices."""
  return evaluate_lib.cold_slices(data.train_item_counts() > 0)


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


class Trainer(runner.Runner):
  """The retrieval trainer: its batches, its (replicated) step, exact validation metrics,
  the drift monitor; the loop around them is runner.Runner's."""
  shown_metrics = ("ndcg@20",)

  def __init__(self, config: Config, workdir: str, data: prepare_lib.PreparedData, *,
               files: Optional[runner.RunFiles] = None,
               examples: Optional[prepare_lib.PreparedData] = None,
               strategy: Optional[tf.distribute.Strategy] = None):
    """``files``: where the run's outputs go, when not the workdir's usual ones (the refit,
    training/refit.py). ``examples``: ``data`` with another training split to draw the
    batches from (the refit's continuation: only the events the selection run never saw);
    ``data`` still sets the frequencies, the corpus and the evaluation. ``strategy``: an
    existing tf.distribute strategy to run under (the refit reuses its selection run's: a
    process gets one multi-worker strategy, and two mirrored ones clash in their
    collective ops)."""
    self.config, self.data, self.wd = config, data, Workdir(workdir)
    self.examples = examples or data
    t = config.train
    tf_keras.utils.set_random_seed(t.seed)
    self.strategy = strategy or make_strategy(t.distribution)
    self.distributed = self.strategy.num_replicas_in_sync > 1
    with self.strategy.scope():
      model, optimizer = build_model(data, config)
    # Replicas need equal slices (the global batch splits evenly): the last partial batch
    # of an epoch is left out there; the order is reshuffled every epoch.
    self._start(model, optimizer, runner.LoopSettings.of(t),
                files or selection_files(self.wd, config),
                header={"dataset": data.name, "data": data.stats},
                steps_per_epoch=pipeline.steps_per_epoch(self.examples, t.batch_size,
                                                         self.distributed))
    self.num_train = int((self.examples.events.split == splits.TRAIN).sum())
    self.train_step = tf.function(self._replicated_step, reduce_retracing=True)
    # One encoder for the whole run: its traced functions are reused every epoch instead of
    # retraced (TensorFlow warns about functions created in a loop).
    self.encoder = Encoder(self.model, data)
    # The same validation users at every evaluation, their queries built once.
    self.valid_queries = split_queries(data, splits.VALID, config)
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

  def dataset(self, epoch: int, skip_batches: int):
    t = self.config.train
    dataset = pipeline.training_dataset(
        self.examples, batch_size=t.batch_size, history_length=self.config.data.history_length,
        seed=t.seed, epoch=epoch, id_dropout=self.config.model.id_dropout,
        skip_batches=skip_batches, drop_remainder=self.distributed)
    if self.distributed:
      dataset = self.strategy.experimental_distribute_dataset(dataset)
    return dataset

  def batch_examples(self, batch, batch_index: int) -> int:
    batch_size = self.config.train.batch_size
    return min(batch_size, self.num_train - batch_index * batch_size)

  def after_step(self, step: int) -> None:
    if self.drift is not None and step % self.config.train.drift_every_steps == 0:
      self._measure_drift(self.drift, step)

  def _measure_drift(self, monitor: DriftMonitor, step: int) -> None:
    """Logs the embedding drift; with --queue_warmup_drift, switches the queue on."""
    drift = monitor.measure()
    if drift is None:
      return
    with self.writer.as_default(step=step):
      tf.summary.scalar("train/embedding_drift", drift)
    self.log.setdefault("drift", []).append({"step": step, "drift": drift})
    task, threshold = self.model.task, self.config.loss.queue_warmup_drift
    if threshold > 0 and task.queue is not None and not bool(runner.number(task.queue_enabled)):
      if drift < threshold:
        task.queue_enabled.assign(True)
        self.log["queue_enabled_at_step"] = step
        logging.info("embedding drift %.4g < --queue_warmup_drift=%g at step %d: queue on",
                     drift, threshold, step)

  def evaluate(self) -> dict:
    return split_metrics(self.model, self.data, splits.VALID, self.config, self.encoder,
                         self.valid_queries)

  def final_metrics(self, valid: Optional[dict]) -> dict:
    test = split_queries(self.data, splits.TEST, self.config)
    return {"valid": valid if valid is not None else self.evaluate(),
            "test": split_metrics(self.model, self.data, splits.TEST, self.config,
                                  self.encoder, test),
            "most_popular_test": most_popular_metrics(self.data, splits.TEST, self.config,
                                                      test)}


def selection_files(wd: Workdir, config: Config) -> runner.RunFiles:
  """The selection run's outputs. With a refit to follow, its best epoch is kept beside the
  shipped model (``checkpoints/best``, which the refit writes) rather than as it."""
  best = wd.best if config.train.refit == "none" else wd.selection_best
  return runner.RunFiles(checkpoints=wd.checkpoints, best=best, tensorboard=wd.tensorboard,
                         metrics=wd.metrics)


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
    raise ConfigError(f"--distribution must be one of {config_lib.DISTRIBUTIONS}, got {name!r}")
  usage = ("--distribution=multi_worker needs TF_CONFIG, e.g. '{\"cluster\": {\"worker\": "
           "[\"host0:12345\", \"host1:12345\"]}, \"task\": {\"type\": \"worker\", "
           "\"index\": 0}}' (see README.md)")
  try:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().as_dict()
    task = (resolver.task_type, resolver.task_id)
  except (ValueError, TypeError, AttributeError) as e:   # not JSON, or not TF_CONFIG's shape
    raise ConfigError(f"{usage}; TF_CONFIG is not valid: {e}") from None
  if not jobs:
    raise ConfigError(f"{usage}; TF_CONFIG is unset or has no cluster")
  if task[0] not in ("chief", "worker") or not 0 <= task[1] < len(jobs.get(task[0], ())):
    raise ConfigError(f"{usage}; TF_CONFIG's task (type {task[0]!r}, index {task[1]}) is "
                      f"not a chief or worker of its cluster {jobs}")
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  except RuntimeError as e:
    if "startup" not in str(e):
      raise
    raise RuntimeError("--distribution=multi_worker: the strategy must be created before any "
                       f"other TensorFlow op runs in the process ({e})") from e
