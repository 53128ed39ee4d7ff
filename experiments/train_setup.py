"""What the training benchmarks share (bench_train.py, bench_step_parts.py): the flags that pick
the data, batch size and towers, the Config they make, and a fresh twotower model, so both
benchmarks time the same setup."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import copy

import tf_keras
from absl import flags

from twotower.config import Config
from twotower.training import loop

flags.DEFINE_string("dataset", "movielens-100k", "Built-in dataset.")
flags.DEFINE_integer("synthetic_users", 5000, "Synthetic users (--dataset=synthetic).")
flags.DEFINE_integer("synthetic_items", 20000, "Synthetic corpus size.")
flags.DEFINE_integer("synthetic_interactions", 300000, "Synthetic log size.")
flags.DEFINE_integer("batch_size", 512, "Batch size B of every variant; queues hold M = 8B.")
flags.DEFINE_list("item_layers", None, "Item tower hidden layer sizes (default: the config's).")
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
  config = Config()
  config.data.dataset = FLAGS.dataset
  config.data.synthetic_users = FLAGS.synthetic_users
  config.data.synthetic_items = FLAGS.synthetic_items
  config.data.synthetic_interactions = FLAGS.synthetic_interactions
  config.train.batch_size = FLAGS.batch_size
  if FLAGS.item_layers:
    config.model.item_layers = tuple(int(n) for n in FLAGS.item_layers)
  return config


def twotower_model(data, config: Config, queue_size: int, **loss_switches):
  """A fresh twotower model (seed 0) with a queue of ``queue_size`` that is on from the first
  step, and ``loss_switches`` set on the config's LossConfig."""
  config = copy.deepcopy(config)
  config.loss.queue_size = queue_size
  config.loss.queue_warmup_steps = 0
  for name, value in loss_switches.items():
    setattr(config.loss, name, value)
  tf_keras.utils.set_random_seed(0)
  return loop.build_model(data, config)[0]
