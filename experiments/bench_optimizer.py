"""Step time of Keras's Adam vs twotower's lazy_adam on a large catalogue, side by side.

Keras's Adam decays the moments of every embedding row and rewrites the whole table on each
step even for a sparse gradient; lazy_adam touches only the batch's rows. The cost of the
former grows with the catalogue, so this is measured where it matters: 200k items by
default. Rounds are interleaved; prints the median ms per step of each (optimizer, queue).

  python experiments/bench_optimizer.py --synthetic_items=200000 --batch_size=256
"""
import twotower  # noqa: F401

# isort: split
import copy
import json
import statistics
import time

import tensorflow as tf
import tf_keras
from absl import app, flags

from twotower.config import Config
from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.training import loop

flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_integer("queue_size", 2048, "Queue size of the CBNS variants.")
flags.DEFINE_integer("synthetic_users", 50000, "Synthetic users.")
flags.DEFINE_integer("synthetic_items", 200000, "Synthetic corpus size.")
flags.DEFINE_integer("synthetic_interactions", 300000, "Synthetic log size.")
flags.DEFINE_integer("steps", 35, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
FLAGS = flags.FLAGS


def _variant(data, config, batches, optimizer_name, queue_size):
  config = copy.deepcopy(config)
  config.loss.queue_size, config.loss.queue_warmup_steps = queue_size, 0
  config.train.optimizer = optimizer_name
  tf_keras.utils.set_random_seed(0)
  model, _ = loop.build_model(data, config)
  step = tf.function(model.train_step, reduce_retracing=True)
  for batch in batches[:5]:       # tracing
    step(batch)

  def run() -> float:
    start = time.perf_counter()
    for batch in batches[5:]:
      out = step(batch)
    float(out["loss"])
    return (time.perf_counter() - start) / (len(batches) - 5) * 1e3
  return run


def main(argv):
  del argv
  config = Config()
  config.data.dataset = "synthetic"
  config.data.synthetic_users = FLAGS.synthetic_users
  config.data.synthetic_items = FLAGS.synthetic_items
  config.data.synthetic_interactions = FLAGS.synthetic_interactions
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  batches = list(pipeline.training_dataset(data, batch_size=FLAGS.batch_size,
                                           history_length=config.data.history_length,
                                           seed=0).take(FLAGS.steps + 5))
  runs = {f"{name} M={m}": _variant(data, config, batches, name, m)
          for name in ("adam", "lazy_adam") for m in (0, FLAGS.queue_size)}
  times = {name: [] for name in runs}
  for _ in range(FLAGS.rounds):
    for name, run in runs.items():
      times[name].append(run())
  median = {name: round(statistics.median(t), 2) for name, t in times.items()}
  print(json.dumps({"items": FLAGS.synthetic_items, "batch_size": FLAGS.batch_size,
                    "median_ms_per_step": median,
                    "adam_over_lazy_adam": {
                        f"M={m}": round(median[f"adam M={m}"] / median[f"lazy_adam M={m}"], 1)
                        for m in (0, FLAGS.queue_size)}}, indent=2))


if __name__ == "__main__":
  app.run(main)
