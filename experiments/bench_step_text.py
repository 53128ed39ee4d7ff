"""CBNS step time against the in-batch step as the item encoder grows (issue 16).

A queue of already-encoded items costs a fixed matrix product per step, whatever the towers
are, while the in-batch step pays for its encoders: the ratio of the CBNS + query memory step
to the in-batch step of the same B should fall towards 1 as the text encoder grows. For each
``--encoders`` size this times, on the same materialised batches and in interleaved rounds
(machine noise hits every variant alike), the trainer's own step (``loop.Trainer.train_step``
with the loop's per-step host sync and drift monitor) for in-batch B, CBNS + query memory
(M = M_u = ``--queue_size``) and the paper's queue alone (query memory off); queues are on
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
flags.DEFINE_integer("warmup_batches", 10, "Untimed steps per trainer first (tracing, and "
                     "more than M / B, so the queue is full).")
FLAGS = flags.FLAGS

VARIANTS = {"in_batch": {"queue_size": 0},
            "cbns_memory": {},
            "cbns_no_memory": {"query_memory_size": 0}}


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
  """The step as the training loop calls it: loss and gradient norm read back on the host
  after every step, then the loop's after-step work (the drift monitor)."""
  def run():
    for batch in batches:
      out = trainer.train_step(batch)
      float(out["loss"]), float(out["grad_norm"])
      trainer.after_step(int(trainer.optimizer.iterations.numpy()))
  return run


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
        batches = list(trainer.dataset(0, 0).take(FLAGS.warmup_batches + FLAGS.num_batches))
      for batch in batches[:FLAGS.warmup_batches]:
        float(trainer.train_step(batch)["loss"])
      runs[(encoder, name)] = _runner_like(trainer, batches[FLAGS.warmup_batches:])
  timed = len(batches) - FLAGS.warmup_batches
  shape = (timed, batch_size, queue, config.model.embedding_dim, config.loss.temperature)
  bare = {"numpy_in_batch": _bare_softmax_numpy(*shape[:2], 0, *shape[3:]),
          "numpy_cbns": _bare_softmax_numpy(*shape),
          "tf_in_batch": _bare_softmax_tf(*shape[:2], 0, *shape[3:]),
          "tf_cbns": _bare_softmax_tf(*shape)}
  for name, run in bare.items():
    runs[("bare", name)] = run
    run()   # tracing
  ms: dict = {key: [] for key in runs}
  for _ in range(FLAGS.rounds):
    for key, run in runs.items():
      started = time.perf_counter()
      run()
      ms[key].append((time.perf_counter() - started) / timed * 1e3)
  med = {key: statistics.median(v) for key, v in ms.items()}
  floor = {kind: med[("bare", f"{kind}_cbns")] - med[("bare", f"{kind}_in_batch")]
           for kind in ("numpy", "tf")}
  table = {}
  for encoder in FLAGS.encoders:
    base = med[(encoder, "in_batch")]
    table[encoder] = {
        "ms_per_step": {name: round(med[(encoder, name)], 2) for name in VARIANTS},
        "rounds_ms": {name: [round(x, 2) for x in ms[(encoder, name)]] for name in VARIANTS},
        "cbns_memory_over_in_batch": round(med[(encoder, "cbns_memory")] / base, 3),
        "cbns_no_memory_over_in_batch": round(med[(encoder, "cbns_no_memory")] / base, 3),
        "floor_over_in_batch": {kind: round((base + extra) / base, 3)
                                for kind, extra in floor.items()}}
  emit({"dataset": data.name, "num_items": data.num_items, "batch_size": batch_size,
        "queue_size": queue, "text_features": list(config.data.text_features),
        "text_max_tokens": config.data.text_max_tokens, "batches": timed,
        "rounds": FLAGS.rounds,
        "bare_products_extra_ms": {kind: round(v, 2) for kind, v in floor.items()},
        "bare_products_ms": {name: round(med[("bare", name)], 2) for name in bare},
        "encoders": table}, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
