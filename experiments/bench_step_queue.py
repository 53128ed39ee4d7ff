"""Milliseconds per training step against the queue size, through the trainer's own step.

One ``training.loop.Trainer`` per queue size on the same prepared data, each run past its
queue warm-up, then timed in interleaved rounds (machine noise hits all of them alike) with
the loop's per-step host sync and drift bookkeeping. At a million items the automatic queue
(M = 8B) and its query memory make the step several times the in-batch one: the B x (B + M)
and M x B products and their softmaxes, which cost the same whatever the towers are.

  python experiments/bench_step_queue.py --synthetic_items=1000000 --synthetic_users=20000 \\
      --synthetic_interactions=1000000 --batch_size=1024 --queue_sizes=0,2048,-1
"""
import twotower  # noqa: F401

# isort: split
import json
import statistics
import tempfile
import time

from absl import app, flags

from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.training import loop

flags.DEFINE_integer("synthetic_items", 1_000_000, "Synthetic corpus size.")
flags.DEFINE_integer("synthetic_users", 20_000, "Synthetic users.")
flags.DEFINE_integer("synthetic_interactions", 1_000_000, "Synthetic log size.")
flags.DEFINE_integer("batch_size", 1024, "Batch size B.")
flags.DEFINE_list("queue_sizes", ["0", "2048", "-1"], "--queue_size values (-1: automatic).")
flags.DEFINE_integer("steps", 40, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = Config()
  config.data.dataset = "synthetic"
  config.data.synthetic_items = FLAGS.synthetic_items
  config.data.synthetic_users = FLAGS.synthetic_users
  config.data.synthetic_interactions = FLAGS.synthetic_interactions
  config.train.batch_size = FLAGS.batch_size
  config.train.progress = False
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  trainers, batches = {}, {}
  for size in map(int, FLAGS.queue_sizes):
    config.loss.queue_size = size
    trainer = loop.Trainer(config, tempfile.mkdtemp(), data)
    trainers[size], batches[size] = trainer, iter(trainer.dataset(0, 0))
    for _ in range(config.loss.queue_warmup_steps + 5):   # past the warm-up
      float(trainer.train_step(next(batches[size]))["loss"])
  times: dict = {size: [] for size in trainers}
  for _ in range(FLAGS.rounds):
    for size, trainer in trainers.items():
      started = time.perf_counter()
      for _ in range(FLAGS.steps):
        float(trainer.train_step(next(batches[size]))["loss"])
        trainer.after_step(int(trainer.optimizer.iterations.numpy()))
      times[size].append((time.perf_counter() - started) / FLAGS.steps * 1000)
  in_batch = statistics.median(times[0]) if 0 in times else None
  report = {str(size): {"queue": int(trainers[size].model.task.queue.size)
                        if trainers[size].model.task.queue is not None else 0,
                        "ms_per_step": round(statistics.median(t), 1),
                        "over_in_batch": round(statistics.median(t) / in_batch, 2)
                        if in_batch else None}
            for size, t in times.items()}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
