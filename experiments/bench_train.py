"""Training throughput: the canonical TFRS setup vs twotower, side by side in one process.

(a) canonical: ``tfrs.Model`` + ``tfrs.tasks.Retrieval`` (in-batch softmax, no metrics),
    trained with ``model.fit`` and Adagrad -- the TFRS tutorials' way (``--canonical_optimizer``
    picks another of twotower's optimizers);
(b) twotower in-batch (queue off);
(c) twotower CBNS with M = 8B;
(d) twotower in-batch encoding every row of the batch through the item tower, as TFRS does,
    instead of each distinct item once (``retrieval.encode_each_item_once``, SpeedyFeed's
    centralized encoding); the report gives the batches' distinct-item fraction.
(e) the ceiling: the same towers, each distinct item encoded once, lazy_adam, and a loss that
    costs nothing (minus the mean dot product of each row's pair). No retrieval loss can run
    faster than this, so ``ceiling_over_canonical`` bounds what any trainer with these
    towers can gain over the canonical setup on this machine.
(b) to (e) use twotower's default optimizer (lazy_adam) and the Trainer's step loop.
All variants use the same towers, data and batch size; rounds are interleaved so that machine
noise hits all of them alike. Prints median examples/s and the ratios.

  python experiments/bench_train.py --dataset=movielens-100k --batch_size=512 --rounds=3
  python experiments/bench_train.py --dataset=synthetic --batch_size=256 --rounds=3 \\
      --synthetic_users=50000 --synthetic_items=200000 --synthetic_interactions=300000
"""
import twotower  # noqa: F401

# isort: split
import json
import statistics
import time
import unittest.mock

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras
from absl import app, flags
from train_setup import config_from_flags, twotower_model

from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.model import retrieval
from twotower.model.towers import ItemTower, UserTower
from twotower.training.optimizers import make_optimizer

flags.DEFINE_integer("rounds", 3, "Interleaved rounds (one epoch each).")
flags.DEFINE_string("canonical_optimizer", "adagrad", "Optimizer of the canonical setup.")
FLAGS = flags.FLAGS


class CanonicalTFRS(tfrs.Model):
  """The tutorial model: towers + tfrs.tasks.Retrieval, nothing else."""

  def __init__(self, user_tower, item_tower):
    super().__init__()
    self.user_tower, self.item_tower = user_tower, item_tower
    self.task = tfrs.tasks.Retrieval()

  def compute_loss(self, features, training=False):
    return self.task(self.user_tower(features["user"], training=training),
                     self.item_tower(features["item"], training=training),
                     compute_metrics=False)


class FreeLoss(tfrs.Model):
  """Towers and optimizer only: the loss is minus the mean dot product of each row's pair."""

  def __init__(self, user_tower, item_tower):
    super().__init__()
    self.user_tower, self.item_tower = user_tower, item_tower

  def compute_loss(self, features, training=False):
    query = self.user_tower(features["user"], training=training)
    item = retrieval.encode_each_item_once(self.item_tower, features["item"], training)
    return -tf.reduce_mean(tf.reduce_sum(query * item, axis=1))


def _dataset(data, config, epoch):
  return pipeline.training_dataset(data, batch_size=config.train.batch_size,
                                   history_length=config.data.history_length,
                                   seed=0, epoch=epoch)


def _plain_model(model_class, optimizer, data, config):
  """Fresh towers in ``model_class`` (canonical or free loss), compiled."""
  tf_keras.utils.set_random_seed(0)
  item = ItemTower(len(data.item_vocab), data.item_features.specs, config.model)
  user = UserTower(len(data.user_vocab), data.user_features.specs, config.model,
                   item.id_embedding)
  model = model_class(user, item)
  model.compile(optimizer=make_optimizer(optimizer, config.train.learning_rate))
  return model


def _canonical(data, config):
  model = _plain_model(CanonicalTFRS, FLAGS.canonical_optimizer, data, config)

  def epoch(e):
    model.fit(_dataset(data, config, e), epochs=1, verbose=0)
  return epoch


def _step_loop(model, data, config):
  """One epoch per call: the compiled train_step on every batch, as the Trainer runs it."""
  step = tf.function(model.train_step, reduce_retracing=True)

  def epoch(e):
    for batch in _dataset(data, config, e):
      out = step(batch)
    float(out["loss"])
  return epoch


def _encode_every_row(item_tower, features, training):
  return item_tower(features, training=training)


def _twotower(data, config, queue_size, every_row=False):
  epoch = _step_loop(twotower_model(data, config, queue_size), data, config)

  def warm_up_epoch_every_row(e):
    # The step is traced in the warm-up epoch (e = 0; full and last partial batch), so
    # patching the encoder there makes every later call encode every row.
    if e == 0:
      with unittest.mock.patch.object(retrieval, "encode_each_item_once", _encode_every_row):
        return epoch(e)
    return epoch(e)
  return warm_up_epoch_every_row if every_row else epoch


def main(argv):
  del argv
  config = config_from_flags()
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  examples = int((data.events.split == 0).sum())
  distinct = [len(np.unique(b["item"]["item_id"].numpy())) / len(b["item"]["item_id"])
              for b in _dataset(data, config, 0)]
  variants = {
      "canonical_tfrs": _canonical(data, config),
      "twotower_in_batch": _twotower(data, config, 0),
      "twotower_cbns_8B": _twotower(data, config, 8 * FLAGS.batch_size),
      "twotower_in_batch_every_row": _twotower(data, config, 0, every_row=True),
      "ceiling_free_loss": _step_loop(
          _plain_model(FreeLoss, config.train.optimizer, data, config), data, config),
  }
  for fn in variants.values():      # warm-up: tracing and first-epoch allocation
    fn(0)
  rates = {name: [] for name in variants}
  for r in range(FLAGS.rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      fn(r + 1)
      rates[name].append(examples / (time.perf_counter() - start))
  med = {k: statistics.median(v) for k, v in rates.items()}
  result = {
      "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size, "examples_per_epoch": examples,
      "optimizers": {"canonical_tfrs": FLAGS.canonical_optimizer,
                     "twotower": config.train.optimizer},
      "median_examples_per_second": {k: round(v) for k, v in med.items()},
      "twotower_in_batch_over_canonical": round(
          med["twotower_in_batch"] / med["canonical_tfrs"], 3),
      "ceiling_over_canonical": round(med["ceiling_free_loss"] / med["canonical_tfrs"], 3),
      "cbns_step_time_over_in_batch": round(med["twotower_in_batch"] / med["twotower_cbns_8B"], 3),
      "item_layers": list(config.model.item_layers),
      "distinct_item_fraction": round(float(np.mean(distinct)), 3),
      "every_row_step_time_over_each_item_once": round(
          med["twotower_in_batch"] / med["twotower_in_batch_every_row"], 3),
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
