"""Input cost: tf.data batches/s against the training step's steps/s, and CSV read rows/s.

(a) The pipeline must not be what training waits for. At the default config (batch 512,
    history 20, id dropout), this times epochs of ``pipeline.training_dataset`` iterated
    alone (built and prefetched as the loop builds it, batches fetched into Python as the
    loop's ``for batch in dataset`` does) against epochs of the compiled train step
    (``tf.function(model.train_step)``, as Trainer runs it, reading the loss each step)
    over batches materialised beforehand, so that no input cost is in it; also the loop's
    own shape, the step fed straight from the pipeline. Rounds are interleaved; it reports
    the medians and pipeline batches/s over train steps/s (the target is at least 5x).
(b) ``readers.read_interactions`` on a ``--csv_rows`` row CSV (user_id, item_id, timestamp
    and rating) written beforehand with numpy (not timed; the file is in the page cache when
    it is read). Reports rows/s (the target is at least 1M rows/s) and MB/s.

  python experiments/bench_input.py --dataset=synthetic --repeats=3 \
      --csv_rows=10000000 --output=/tmp/bench_input.json
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import json
import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import app, flags
from report import emit

from twotower.config import Config
from twotower.data import pipeline, readers
from twotower.data import prepare as prepare_lib
from twotower.model import retrieval
from twotower.training import loop

flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "movielens-100k"],
                  "Built-in dataset for the pipeline part (synthetic at the config's sizes).")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds of the pipeline part.")
flags.DEFINE_integer("epochs_per_round", 2, "Epochs each variant runs per round.")
flags.DEFINE_integer("csv_rows", 10_000_000, "Rows of the generated CSV.")
flags.DEFINE_integer("csv_repeats", 1, "Timed reads of the CSV (the median is reported).")
flags.DEFINE_integer("csv_users", 500_000, "Distinct user ids drawn from in the CSV.")
flags.DEFINE_integer("csv_items", 100_000, "Distinct item ids drawn from in the CSV.")
flags.DEFINE_bool("csv_rating", True, "Write a rating column too.")
flags.DEFINE_list("parts", ["pipeline", "csv"], "Which parts to run.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS

_CSV_BLOCK = 1 << 20   # rows formatted at a time


# -- (a) pipeline vs train step ------------------------------------------------------------


def _dataset(data, config: Config, epoch: int) -> tf.data.Dataset:
  """The loop's training dataset for one epoch (Trainer._epoch's arguments)."""
  return pipeline.training_dataset(
      data, batch_size=config.train.batch_size, history_length=config.data.history_length,
      seed=config.train.seed, epoch=epoch, id_dropout=config.model.id_dropout)


def _build_step(data, config: Config):
  """The model and compiled train step, built as Trainer builds them (no distribution)."""
  tf_keras.utils.set_random_seed(config.train.seed)
  model, _ = loop.build_model(data, config)
  return tf.function(model.train_step, reduce_retracing=True)


def _run_steps(step, batches) -> int:
  n = 0
  for batch in batches:
    out = step(batch)
    float(out["loss"]), float(out["grad_norm"])   # the loop reads both every step
    n += 1
  return n


def bench_pipeline() -> dict:
  config = Config()
  config.data.dataset = FLAGS.dataset
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  steps = pipeline.steps_per_epoch(data, config.train.batch_size)
  step = _build_step(data, config)
  materialised = list(_dataset(data, config, 0))
  _run_steps(step, materialised)   # warm-up: traces the full and the last partial batch

  def pipeline_only(epoch):
    n = 0
    for _ in _dataset(data, config, epoch):
      n += 1
    return n

  variants = {
      "pipeline_only": pipeline_only,
      "train_step_materialised": lambda epoch: _run_steps(step, materialised),
      "train_step_fed_by_pipeline": lambda epoch: _run_steps(step, _dataset(data, config,
                                                                            epoch)),
  }
  rates = {name: [] for name in variants}
  epochs = FLAGS.epochs_per_round
  for r in range(FLAGS.repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      n = sum(fn(1 + r * epochs + e) for e in range(epochs))
      rates[name].append(n / (time.perf_counter() - start))
      assert n == epochs * steps, (name, n, steps)
  med = {k: statistics.median(v) for k, v in rates.items()}
  synthetic = ({k: getattr(config.data, k) for k in
                ("synthetic_users", "synthetic_items", "synthetic_interactions")}
               if FLAGS.dataset == "synthetic" else None)
  return {
      "dataset": FLAGS.dataset, "synthetic_sizes": synthetic, "stats": data.stats,
      "batch_size": config.train.batch_size, "history_length": config.data.history_length,
      "id_dropout": config.model.id_dropout,
      "queue_size": retrieval.resolve_queue_size(config.loss, config.train.batch_size,
                                                 data.num_items),
      "batches_per_epoch": steps, "repeats": FLAGS.repeats, "epochs_per_round": epochs,
      "median_batches_per_second": {k: round(v, 1) for k, v in med.items()},
      "batches_per_second": {k: [round(x, 1) for x in v] for k, v in rates.items()},
      "pipeline_over_train_step": round(med["pipeline_only"] / med["train_step_materialised"],
                                        2),
      "pipeline_over_train_step_target": 5.0,
      "fed_over_materialised_step": round(
          med["train_step_fed_by_pipeline"] / med["train_step_materialised"], 3),
  }


# -- (b) CSV reading -----------------------------------------------------------------------


def _ascii_digits(values: np.ndarray) -> np.ndarray:
  """[n, width] ASCII digits of non-negative integers, right-aligned, 0 bytes in front."""
  values = np.asarray(values, np.int64)
  width = len(str(int(values.max(initial=0))))
  out = np.empty((len(values), width), np.uint8)
  rest = values.copy()
  for j in range(width - 1, -1, -1):
    out[:, j] = 48 + rest % 10
    rest //= 10
  num_digits = np.ones(len(values), np.int64)
  for j in range(1, width):
    num_digits += values >= 10**j
  out[np.arange(width)[None, :] < (width - num_digits)[:, None]] = 0
  return out


def write_interactions_csv(path: str, rows: int, num_users: int, num_items: int,
                           rating: bool, seed: int) -> int:
  """A CSV interaction log of ``rows`` random rows, formatted with numpy; returns its bytes."""
  rng = np.random.default_rng(seed)
  header = "user_id,item_id,timestamp" + (",rating" if rating else "") + "\n"
  with open(path, "wb") as f:
    f.write(header.encode())
    for start in range(0, rows, _CSV_BLOCK):
      n = min(_CSV_BLOCK, rows - start)
      sep = np.full((n, 1), ord(","), np.uint8)
      columns = [_ascii_digits(rng.integers(1, num_users + 1, n)), sep,
                 # Popular items first: a skewed, more realistic id distribution.
                 _ascii_digits(np.minimum(rng.zipf(1.3, n), num_items)), sep,
                 _ascii_digits(rng.integers(1_500_000_000, 1_600_000_000, n))]
      if rating:
        columns += [sep, _ascii_digits(rng.integers(1, 6, n))]
      columns.append(np.full((n, 1), ord("\n"), np.uint8))
      block = np.concatenate(columns, axis=1).ravel()
      f.write(block[block != 0].tobytes())
  return os.path.getsize(path)


def bench_csv() -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "interactions.csv")
    start = time.perf_counter()
    size = write_interactions_csv(path, FLAGS.csv_rows, FLAGS.csv_users, FLAGS.csv_items,
                                  FLAGS.csv_rating, FLAGS.seed)
    print(f"wrote {FLAGS.csv_rows:,} rows ({size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.1f}s", flush=True)
    seconds = []
    for _ in range(FLAGS.csv_repeats):
      start = time.perf_counter()
      inter = readers.read_interactions(path)
      seconds.append(time.perf_counter() - start)
      assert len(inter.user_id) == FLAGS.csv_rows, len(inter.user_id)
      del inter
      print(f"read in {seconds[-1]:.2f}s", flush=True)
  med = statistics.median(seconds)
  return {
      "rows": FLAGS.csv_rows, "rating_column": FLAGS.csv_rating, "file_bytes": size,
      "seconds": [round(s, 2) for s in seconds], "median_seconds": round(med, 2),
      "rows_per_second": round(FLAGS.csv_rows / med),
      "megabytes_per_second": round(size / 1e6 / med, 1),
      "rows_per_second_target": 1_000_000,
  }


def main(argv):
  del argv
  report = {"cpus": os.cpu_count()}
  if "pipeline" in FLAGS.parts:
    report["pipeline"] = bench_pipeline()
    print(json.dumps(report["pipeline"]), flush=True)
  if "csv" in FLAGS.parts:
    report["csv"] = bench_csv()
  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
