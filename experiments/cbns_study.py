"""In-batch vs cross-batch negatives: quality, step cost and memory, one table.

Each variant is a full twotower-train run on the same prepared data and seed, reported on the
test split with the exact protocol: early stopping on validation Recall@20, or, with
``--step_limit``, a fixed number of steps (equal steps). Variants are
``B:M[:logq[:B']][@steps][+field=value...]`` strings: B the batch size, M the queue size
(0 = in-batch only), logq ``on`` (default) or ``off``, B' mixed negatives per step (default
0), an optional step limit of this variant's own (e.g. the in-batch run given the wall time
of a CBNS run), and any model, loss or train config field set for this variant alone
(``256:2048+queue_decoupled=true``, ``256:0+learning_rate=0.001``, ``256:0+text_encoder=cnn``).
Every twotower-train flag (every Config field) sets the base configuration of all variants,
so the text features and synthetic titles come in as on twotower-train
(``--synthetic_title_tokens=32 --text_features=title --text_encoder=attention``); a
variant's B, M, logQ, B' and steps override ``--batch_size``, ``--queue_size``, ``--logq``,
``--mixed_negatives`` and ``--step_limit``. The study defaults to ``--refit=none`` (the test
figures are the selection model's either way). ``--eval_every_steps=N`` validates every N
steps inside each run, so the Recall@20 curves have points within an epoch; with it, set
``--patience`` and ``--lr_plateau_patience`` high to keep fixed-length runs fixed.
Wall-clock figures share one machine and process, run one after the other, so compare them
within a run only; peak memory is the process's resident high-water mark during the run.

  python experiments/cbns_study.py --dataset=movielens-100k \\
      --variants=512:0,512:512,512:2048,512:0:off,512:2048:off,2560:0
  python experiments/cbns_study.py --dataset=synthetic --synthetic_items=200000 \\
      --synthetic_users=50000 --synthetic_interactions=2000000 --step_limit=2000 \\
      --variants=256:0,2048:0,256:2048,256:4096,256:2048:off,256:0:on:256,256:2048:on:256
  # issue 16: the encoder-heavy corpus (attention over 32-token titles), curves every 1,000 steps
  python experiments/cbns_study.py --dataset=synthetic --synthetic_items=200000 \\
      --synthetic_users=10000 --synthetic_interactions=1000000 --synthetic_clusters=500 \\
      --synthetic_affinity_temperature=0.05 --synthetic_title_tokens=32 --text_features=title \\
      --text_encoder=attention --seed=16 --step_limit=3000 --eval_every_steps=1000 \\
      --eval_users=2000 --patience=100 --lr_plateau_patience=100 \\
      --variants=256:0,2048:0@375+eval_every_steps=125,256:2048 \\
      --plot_prefix=experiments/plots/synthetic200k_text

Validation Recall@20 against training seconds and the embedding drift against steps come
out as PNGs with ``--plot_prefix``.
"""
import dataclasses
import json
import tempfile
import time

import numpy as np
import peak_memory
from absl import app, flags

import twotower  # noqa: F401
from twotower.cli import flags as flags_lib
from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.jobs import train as train_job

flags_lib.define_config_flags()   # every Config field is a flag, as on twotower-train
flags.DEFINE_alias("mixed_distribution", "mixed_negatives_distribution")
flags.DEFINE_list("variants", ["512:0", "512:512", "512:2048", "512:0:off", "512:2048:off"],
                  "B:M[:logq[:B']][@steps][+field=value...] per run.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.DEFINE_string("plot_prefix", None, "Write PREFIX_recall_vs_time.png and PREFIX_drift.png "
                    "(needs the experiments extra: matplotlib).")
# The study compares training runs: no refit (the test figures are the selection model's
# either way), no progress bars.
flags.FLAGS.set_default("refit", "none")
flags.FLAGS.set_default("progress", False)
FLAGS = flags.FLAGS

REPORTED = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20")


@dataclasses.dataclass
class Variant:
  batch_size: int
  queue_size: int
  logq: bool = True
  mixed_negatives: int = 0
  step_limit: int = 0           # 0: --step_limit
  overrides: dict = dataclasses.field(default_factory=dict)   # "loss.field" / "train.field"

  @property
  def other(self) -> str:
    """The overrides as ``field=value`` words."""
    return " ".join(f"{key.split('.')[1]}={value}" for key, value in self.overrides.items())

  @property
  def label(self) -> str:
    text = f"B={self.batch_size} M={self.queue_size} logQ={'on' if self.logq else 'off'}"
    text += f" B'={self.mixed_negatives}" if self.mixed_negatives else ""
    return text + (f" {self.other}" if self.overrides else "")


def _override(text: str) -> tuple:
  """("section.field", value) of a ``field=value`` variant suffix, typed by the field: any
  model, loss or train field (the data is prepared once, so data fields are the flags')."""
  name, _, value = text.partition("=")
  for section in ("model", "loss", "train"):
    default = getattr(getattr(Config(), section), name, None)
    if default is not None and not isinstance(default, (tuple, list)):
      if isinstance(default, bool):
        if value not in ("true", "false"):
          raise ValueError
        return f"{section}.{name}", value == "true"
      return f"{section}.{name}", type(default)(value)
  raise ValueError


def parse_variant(text: str) -> Variant:
  text, *extra = text.split("+")
  spec, _, steps = text.partition("@")
  parts = spec.split(":")
  try:
    if len(parts) not in (2, 3, 4) or (len(parts) > 2 and parts[2] not in ("on", "off")):
      raise ValueError
    return Variant(int(parts[0]), int(parts[1]), len(parts) == 2 or parts[2] == "on",
                   int(parts[3]) if len(parts) == 4 else 0, int(steps) if steps else 0,
                   dict(map(_override, extra)))
  except ValueError:
    raise flags.ValidationError(
        f"--variants entries are B:M[:on|off[:B']][@steps][+field=value...] with model, "
        f"loss or train config fields, got {'+'.join([text] + extra)!r}") from None


def _config() -> Config:
  """The flags' Config (every twotower-train flag applies to every variant)."""
  return flags_lib.config_from_flags()


def run_variant(data, v: Variant) -> dict:
  config = _config()
  config.train = dataclasses.replace(config.train, batch_size=v.batch_size,
                                     step_limit=v.step_limit or config.train.step_limit)
  config.loss = dataclasses.replace(config.loss, queue_size=v.queue_size, logq=v.logq,
                                    mixed_negatives=v.mixed_negatives)
  for key, value in v.overrides.items():
    section, name = key.split(".")
    setattr(getattr(config, section), name, value)
  config.validate()
  peak_memory.reset_peak_rss()
  before = peak_memory.status_bytes("VmRSS")
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    log = train_job.train(config, workdir, data)
    wall = time.perf_counter() - started
  peak = peak_memory.peak_rss_bytes() - before
  epochs = log["epochs"]
  speeds = sorted(e["examples_per_second"] for e in epochs[1:] or epochs)   # skip tracing
  final = log["final"]
  steps = np.diff([0] + [e["step"] for e in epochs])
  elapsed = np.cumsum([n * v.batch_size / e["examples_per_second"]
                       for n, e in zip(steps, epochs)])
  speed = speeds[len(speeds) // 2]
  return {"batch_size": v.batch_size, "queue_size": v.queue_size, "logq": v.logq,
          "mixed_negatives": v.mixed_negatives, "label": v.label,
          "other": v.other,
          "best_epoch": final["best_epoch"], "steps": final["steps"],
          "wall_seconds": round(wall, 1), "train_seconds": round(float(elapsed[-1]), 1),
          "median_examples_per_second": round(speed),
          "step_ms": round(1000 * v.batch_size / speed, 2),
          "peak_rss_increase_mb": round(peak / 2**20),
          "test": {k: round(final["test"][k], 4) for k in REPORTED},
          "valid_recall@20": round(final["valid"]["recall@20"], 4),
          "curve": [{"step": e["step"], "train_seconds": round(float(t), 2),
                     "valid_recall@20": e["valid"]["recall@20"]}
                    for t, e in zip(elapsed, epochs)],
          "drift": log.get("drift", [])}


def main(argv):
  del argv
  variants = [parse_variant(v) for v in FLAGS.variants]
  config = _config()
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  print(json.dumps({"data": data.stats}), flush=True)
  rows = []
  for variant in variants:
    rows.append(run_variant(data, variant))
    print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("curve", "drift")}),
          flush=True)
  print("\n| B | M | logQ | B' | other | steps | test R@10 | R@20 | R@50 | R@100 | NDCG@10 | "
        "step ms | ex/s | train s | wall s | peak MB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    t = r["test"]
    print(f"| {r['batch_size']} | {r['queue_size']} | {'on' if r['logq'] else 'off'} | "
          f"{r['mixed_negatives']} | {r['other']} | {r['steps']} | {t['recall@10']:.4f} | "
          f"{t['recall@20']:.4f} | {t['recall@50']:.4f} | {t['recall@100']:.4f} | "
          f"{t['ndcg@10']:.4f} | {r['step_ms']} | {r['median_examples_per_second']} | "
          f"{r['train_seconds']} | {r['wall_seconds']} | {r['peak_rss_increase_mb']} |")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"dataset": FLAGS.dataset, "config": json.loads(config.to_json()),
                 "data": data.stats, "runs": rows}, f, indent=2)
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
      ax.plot([p[x_key] for p in points], [p[y_key] for p in points], marker=".",
              label=r["label"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{FLAGS.dataset}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}_{name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
  app.run(main)
