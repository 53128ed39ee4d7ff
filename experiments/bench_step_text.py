"""CBNS step time against the in-batch step as the item encoder grows (issue 16).

A queue of already-encoded items costs a fixed matrix product per step, whatever the towers
are, while the in-batch step pays for its encoders: the ratio of the CBNS + query memory step
to the in-batch step of the same B should fall towards 1 as the text encoder grows. For each
``--encoders`` size this times, on the same materialised batches and in interleaved rounds
(one step of each variant in turn, the order rotated every turn, so that machine noise hits every variant alike), the trainer's own step (``loop.Trainer.train_step``
with the loop's per-step host sync and drift monitor) for in-batch B, CBNS + query memory
(M = M_u = ``--queue_size``), the same decoupled (``--queue_decoupled``) and the paper's
queue alone (query memory off); queues are on
from the first step and full before the timing starts. Beside them it times the bare products
of bench_step_parts.py (the [B, B + M] logits, softmax and gradients, and the memory's [M, B]
log-sum-exp, towers excluded) in numpy and TensorFlow: ``floor_over_in_batch`` is the ratio
CBNS would reach if nothing but those products were added to that in-batch step.

  python experiments/bench_step_text.py --dataset=synthetic --synthetic_items=200000 \\
      --synthetic_users=10000 --synthetic_interactions=1000000 --synthetic_clusters=500 \\
      --synthetic_title_tokens=32 --batch_size=256 \\
      --encoders=attention:64:4:1,attention:128:8:1,attention:256:16:2
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import copy
import statistics
import tempfile
import time

from absl import app, flags
from bench_step_parts import _bare_softmax_numpy, _bare_softmax_tf
from report import emit
from train_setup import config_from_flags

from twotower.data import prepare as prepare_lib
from twotower.training import loop

flags.DEFINE_integer("synthetic_clusters", 20, "Synthetic topics.")
flags.DEFINE_float("synthetic_affinity_temperature", 0.2, "Synthetic preference temperature.")
flags.DEFINE_integer("synthetic_title_tokens", 32, "Synthetic title length (0: no titles).")
flags.DEFINE_list("text_features", ["title"], "Text columns (movie_title on movielens-100k).")
flags.DEFINE_integer("text_max_tokens", 32, "Tokens kept per text value.")
flags.DEFINE_list("encoders", ["attention:64:4:1", "attention:128:8:1", "attention:256:16:2"],
                  "ENCODER:text_dim:text_heads:text_layers per size (mean and cnn ignore heads).")
flags.DEFINE_integer("queue_size", 2048, "CBNS queue size M (and query memory M_u).")
flags.DEFINE_string("plot", None, "Also draw the ratios against the encoders as this PNG "
                    "(needs the experiments extra: matplotlib).")
flags.DEFINE_integer("timed_batches", 20, "Distinct batches timed, each once per round.")
flags.DEFINE_integer("warmup_batches", 10, "Untimed steps per trainer first (tracing, and "
                     "more than M / B, so the queue is full).")
FLAGS = flags.FLAGS

VARIANTS = {"in_batch": {"queue_size": 0},
            "cbns_memory": {},
            "cbns_no_memory": {"query_memory_size": 0},
            "cbns_memory_decoupled": {"queue_decoupled": True}}


def _config():
  config = config_from_flags()
  d = config.data
  d.synthetic_clusters = FLAGS.synthetic_clusters
  d.synthetic_affinity_temperature = FLAGS.synthetic_affinity_temperature
  d.synthetic_title_tokens = FLAGS.synthetic_title_tokens if d.dataset == "synthetic" else 0
  d.text_features = tuple(FLAGS.text_features)
  d.text_max_tokens = FLAGS.text_max_tokens
  config.loss.queue_size = FLAGS.queue_size
  config.loss.queue_warmup_steps = 0
  config.train.progress = False
  config.train.refit = "none"
  return config


def _trainer(data, config, encoder: str, switches: dict):
  config = copy.deepcopy(config)
  kind, dim, heads, layers = encoder.split(":")
  config.model.text_encoder = kind
  config.model.text_dim, config.model.text_heads = int(dim), int(heads)
  config.model.text_layers = int(layers)
  for name, value in switches.items():
    setattr(config.loss, name, value)
  config.validate()
  return loop.Trainer(config, tempfile.mkdtemp(), data)


def _runner_like(trainer, batches):
  """One step as the training loop calls it: loss and gradient norm read back on the host,
  then the loop's after-step work (the drift monitor)."""
  def run(index: int):
    out = trainer.train_step(batches[index])
    float(out["loss"]), float(out["grad_norm"])
    trainer.after_step(int(trainer.optimizer.iterations.numpy()))
  return run


def _one_call(run_steps):
  """bench_step_parts' bare products, built for one step per call."""
  return lambda index: run_steps()


def main(argv):
  del argv
  config = _config()
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  batch_size, queue = config.train.batch_size, FLAGS.queue_size
  runs = {}
  batches = None
  for encoder in FLAGS.encoders:
    for name, switches in VARIANTS.items():
      trainer = _trainer(data, config, encoder, switches)
      if batches is None:   # the same batches for every variant
        batches = list(trainer.dataset(0, 0).take(FLAGS.warmup_batches + FLAGS.timed_batches))
      for batch in batches[:FLAGS.warmup_batches]:
        float(trainer.train_step(batch)["loss"])
      runs[(encoder, name)] = _runner_like(trainer, batches[FLAGS.warmup_batches:])
  timed = len(batches) - FLAGS.warmup_batches
  shape = (1, batch_size, queue, config.model.embedding_dim, config.loss.temperature)
  bare = {"numpy_in_batch": _bare_softmax_numpy(*shape[:2], 0, *shape[3:]),
          "numpy_cbns": _bare_softmax_numpy(*shape),
          "tf_in_batch": _bare_softmax_tf(*shape[:2], 0, *shape[3:]),
          "tf_cbns": _bare_softmax_tf(*shape)}
  for name, run in bare.items():
    runs[("bare", name)] = _one_call(run)
    run()   # tracing
  # Interleaved step by step: each pass times one step (one bare-product call) of every
  # variant, in an order rotated every pass, so that load changing by the second on a shared
  # machine hits every variant alike; the medians over the passes are compared.
  ms: dict = {key: [] for key in runs}
  keys = list(runs)
  for turn in range(FLAGS.rounds * timed):
    for key in keys[turn % len(keys):] + keys[:turn % len(keys)]:
      started = time.perf_counter()
      runs[key](turn % timed)
      ms[key].append((time.perf_counter() - started) * 1e3)
  med = {key: statistics.median(v) for key, v in ms.items()}
  floor = {kind: med[("bare", f"{kind}_cbns")] - med[("bare", f"{kind}_in_batch")]
           for kind in ("numpy", "tf")}
  table = {}
  for encoder in FLAGS.encoders:
    base = med[(encoder, "in_batch")]
    table[encoder] = {
        "ms_per_step": {name: round(med[(encoder, name)], 2) for name in VARIANTS},
        "quartiles_ms": {name: [round(x, 2) for x in statistics.quantiles(ms[(encoder, name)])]
                         for name in VARIANTS},
        "cbns_memory_over_in_batch": round(med[(encoder, "cbns_memory")] / base, 3),
        "cbns_no_memory_over_in_batch": round(med[(encoder, "cbns_no_memory")] / base, 3),
        "cbns_memory_decoupled_over_in_batch": round(
            med[(encoder, "cbns_memory_decoupled")] / base, 3),
        "floor_over_in_batch": {kind: round((base + extra) / base, 3)
                                for kind, extra in floor.items()}}
  emit({"dataset": data.name, "num_items": data.num_items, "batch_size": batch_size,
        "queue_size": queue, "text_features": list(config.data.text_features),
        "text_max_tokens": config.data.text_max_tokens, "batches": timed,
        "rounds": FLAGS.rounds, "steps_timed_per_variant": FLAGS.rounds * timed,
        "bare_products_extra_ms": {kind: round(v, 2) for kind, v in floor.items()},
        "bare_products_ms": {name: round(med[("bare", name)], 2) for name in bare},
        "encoders": table}, FLAGS.output)
  if FLAGS.plot:
    plot(table, FLAGS.plot, f"{data.name}, B={batch_size}, M={queue}")


def plot(table: dict, path: str, title: str) -> None:
  """Step-time ratios over in-batch B against the encoder, the bare-product floor beside."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(table)
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (("cbns_memory_over_in_batch", "CBNS + query memory"),
                     ("cbns_no_memory_over_in_batch", "the paper's queue alone")):
    ax.plot(names, [table[n][key] for n in names], marker="o", label=label)
  ax.plot(names, [table[n]["floor_over_in_batch"]["numpy"] for n in names], marker=".",
          linestyle="--", label="bare products floor (numpy)")
  ax.axhline(1.25, color="grey", linewidth=0.8, linestyle=":", label="issue 16's bar, 1.25x")
  ax.set_xlabel("text encoder (kind:text_dim:heads:layers)")
  ax.tick_params(axis="x", labelsize=7, labelrotation=15)
  ax.set_ylabel("step time / in-batch step time")
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
