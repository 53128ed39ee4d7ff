"""What each part of the CBNS loss costs per training step, on fixed batches.

Whole-epoch rounds (bench_train.py) include the input pipeline, which shares the cores with
the step and makes ratios swing between runs. This times ``train_step`` alone over the same
materialised batches, interleaved rounds, for in-batch and CBNS (M = 8B) with each part of
the loss switched off in turn: the known-positive masks, logQ, the batch-mean centering. The
differences are what each part costs; CBNS's extra cost over in-batch should not grow with
the towers (the queue entries are not encoded).

  python experiments/bench_step_parts.py --dataset=movielens-100k --batch_size=512
  python experiments/bench_step_parts.py --dataset=movielens-100k --batch_size=512 \\
      --item_layers=1024,1024
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import copy
import statistics
import time

import tensorflow as tf
import tf_keras
from absl import app, flags

from report import emit

from twotower.config import Config
from twotower.data import pipeline
from twotower.data import prepare as prepare_lib
from twotower.train import loop

flags.DEFINE_string("dataset", "movielens-100k", "Built-in dataset.")
flags.DEFINE_integer("batch_size", 512, "Batch size B; the queue holds M = 8B.")
flags.DEFINE_integer("num_batches", 60, "Materialised batches timed per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_list("item_layers", None, "Item tower hidden layer sizes (default: the config's).")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS

# name -> (queue size in batches, loss switches)
VARIANTS = {
    "in_batch": (0, {}),
    "in_batch_no_masks": (0, {"mask_history": False, "mask_accidental_hits": False}),
    "cbns": (8, {}),
    "cbns_no_masks": (8, {"mask_history": False, "mask_accidental_hits": False}),
    "cbns_no_logq": (8, {"logq": False}),
    "cbns_no_centering": (8, {"queue_centering": False}),
}


def _timed_steps(data, config, batches, queue_batches, switches):
  config = copy.deepcopy(config)
  config.loss.queue_size = queue_batches * config.train.batch_size
  config.loss.queue_warmup_steps = 0
  for name, value in switches.items():
    setattr(config.loss, name, value)
  tf_keras.utils.set_random_seed(0)
  model, _ = loop.build_model(data, config)
  step = tf.function(model.train_step, reduce_retracing=True)

  def run():
    for batch in batches:
      out = step(batch)
    float(out["loss"])   # the last step has finished
  return run


def main(argv):
  del argv
  config = Config()
  config.data.dataset = FLAGS.dataset
  config.train.batch_size = FLAGS.batch_size
  if FLAGS.item_layers:
    config.model.item_layers = tuple(int(n) for n in FLAGS.item_layers)
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  batches = list(pipeline.training_dataset(data, batch_size=FLAGS.batch_size,
                                           history_length=config.data.history_length,
                                           seed=0, epoch=0).take(FLAGS.num_batches))
  variants = {name: _timed_steps(data, config, batches, queue, switches)
              for name, (queue, switches) in VARIANTS.items()}
  for run in variants.values():   # warm-up: tracing
    run()
  ms = {name: [] for name in variants}
  for _ in range(FLAGS.rounds):
    for name, run in variants.items():
      start = time.perf_counter()
      run()
      ms[name].append((time.perf_counter() - start) / len(batches) * 1e3)
  med = {name: statistics.median(v) for name, v in ms.items()}
  emit({
      "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size,
      "queue_size": 8 * FLAGS.batch_size, "item_layers": list(config.model.item_layers),
      "batches": len(batches), "rounds": FLAGS.rounds,
      "median_ms_per_step": {k: round(v, 1) for k, v in med.items()},
      "cbns_extra_ms": round(med["cbns"] - med["in_batch"], 1),
      "cbns_over_in_batch": round(med["cbns"] / med["in_batch"], 3),
      "ms_of_masks_with_queue": round(med["cbns"] - med["cbns_no_masks"], 1),
      "ms_of_logq_with_queue": round(med["cbns"] - med["cbns_no_logq"], 1),
      "ms_of_centering_with_queue": round(med["cbns"] - med["cbns_no_centering"], 1),
  }, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
