"""In-batch vs cross-batch negatives at equal steps: quality and step cost, one table.

Each variant is a full twotower-train run (early stopping on validation Recall@20) on the
same prepared data and seed; reported on the test split with the exact protocol. Variants
are ``B:M[:logq]`` strings: B the batch size, M the queue size (0 = in-batch only), logq
``on`` (default) or ``off``. Wall-clock figures share one machine and process, run one
after the other, so compare them within a run only.

  python experiments/cbns_study.py --dataset=movielens-100k \\
      --variants=512:0,512:512,512:2048,512:0:off,512:2048:off,2560:0

Validation Recall@20 against training seconds and the embedding drift against steps come
out as PNGs with ``--plot_prefix``. Mixed negatives and the large synthetic corpus are not
done yet.
"""
import twotower  # noqa: F401

import dataclasses
import json
import tempfile
import time

import numpy as np
from absl import app, flags

from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.train import loop

flags.DEFINE_string("dataset", "movielens-100k", "Built-in dataset.")
flags.DEFINE_list("variants", ["512:0", "512:512", "512:2048", "512:0:off", "512:2048:off"],
                  "B:M[:logq] per run.")
flags.DEFINE_integer("epochs", 30, "Epoch cap (early stopping usually ends runs sooner).")
flags.DEFINE_integer("seed", 0, "Seed shared by every run.")
flags.DEFINE_float("learning_rate", None, "Learning rate of every run (default: Config's).")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.DEFINE_string("plot_prefix", None, "Write PREFIX_recall_vs_time.png and PREFIX_drift.png "
                    "(needs the experiments extra: matplotlib).")
FLAGS = flags.FLAGS

REPORTED = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20")


def parse_variant(text: str) -> tuple[int, int, bool]:
  parts = text.split(":")
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("on", "off")):
    raise flags.ValidationError(f"--variants entries are B:M[:on|off], got {text!r}")
  return int(parts[0]), int(parts[1]), len(parts) == 2 or parts[2] == "on"


def run_variant(data, batch_size: int, queue_size: int, logq: bool) -> dict:
  config = Config()
  config.data.dataset = FLAGS.dataset
  config.train = dataclasses.replace(config.train, batch_size=batch_size, epochs=FLAGS.epochs,
                                     seed=FLAGS.seed, progress=False)
  config.loss = dataclasses.replace(config.loss, queue_size=queue_size, logq=logq)
  if FLAGS.learning_rate is not None:
    config.train.learning_rate = FLAGS.learning_rate
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    log = loop.train(config, workdir, data)
    wall = time.perf_counter() - started
  epochs = log["epochs"]
  speeds = sorted(e["examples_per_second"] for e in epochs[1:] or epochs)   # skip tracing
  final = log["final"]
  num_train = data.stats["train"]
  elapsed = np.cumsum([num_train / e["examples_per_second"] for e in epochs])
  return {"batch_size": batch_size, "queue_size": queue_size, "logq": logq,
          "best_epoch": final["best_epoch"], "steps": final["steps"],
          "wall_seconds": round(wall, 1),
          "median_examples_per_second": round(speeds[len(speeds) // 2]),
          "test": {k: round(final["test"][k], 4) for k in REPORTED},
          "valid_recall@20": round(final["valid"]["recall@20"], 4),
          "curve": [{"train_seconds": round(float(t), 2),
                     "valid_recall@20": e["valid"]["recall@20"]}
                    for t, e in zip(elapsed, epochs)],
          "drift": log.get("drift", [])}


def main(argv):
  del argv
  variants = [parse_variant(v) for v in FLAGS.variants]
  config = Config()
  config.data.dataset = FLAGS.dataset
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  rows = []
  for batch_size, queue_size, logq in variants:
    rows.append(run_variant(data, batch_size, queue_size, logq))
    print(json.dumps(rows[-1]), flush=True)
  print("\n| B | M | logQ | best epoch | test R@20 | test R@50 | test NDCG@10 | ex/s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch_size']} | {r['queue_size']} | {'on' if r['logq'] else 'off'} | "
          f"{r['best_epoch']} | {r['test']['recall@20']:.4f} | {r['test']['recall@50']:.4f} "
          f"| {r['test']['ndcg@10']:.4f} | {r['median_examples_per_second']} |")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"dataset": FLAGS.dataset, "runs": rows}, f, indent=2)
  if FLAGS.plot_prefix:
    plot(rows, FLAGS.plot_prefix)


def plot(rows: list, prefix: str) -> None:
  """PREFIX_recall_vs_time.png (validation Recall@20 against training seconds) and
  PREFIX_drift.png (embedding drift against step)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  for name, x_key, y_key, source, xlabel, ylabel in (
      ("recall_vs_time", "train_seconds", "valid_recall@20", "curve", "training seconds",
       "validation Recall@20"),
      ("drift", "step", "drift", "drift", "step", "mean L2 drift per Δt")):
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
      points = r[source]
      label = f"B={r['batch_size']} M={r['queue_size']} logQ={'on' if r['logq'] else 'off'}"
      ax.plot([p[x_key] for p in points], [p[y_key] for p in points], marker=".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{FLAGS.dataset}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}_{name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
  app.run(main)
