"""The ranking head's hard-negative mining at scale: all anchors exactly (the old way,
extrapolated from a timed probe), a seeded sample of anchors exactly, and the same sample
through a ScaNN searcher, with the ScaNN candidates' recall of the exact ones.

A retrieval model is trained briefly (``--steps``) on synthetic data so that the embeddings
have the structure ANN search meets in practice; mining costs do not depend on its quality.

  python experiments/bench_mining.py --interactions=1000000 --items=100000 --users=20000
"""
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from report import emit

import twotower  # noqa: F401
from twotower.config import Config, DataConfig, RankingConfig, TrainConfig
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.jobs import train as train_job
from twotower.jobs.train_ranking import ann_search
from twotower.model.encoding import Encoder
from twotower.training import ranking_mining
from twotower.workdir import load_trained

flags.DEFINE_integer("interactions", 1_000_000, "Synthetic interactions.")
flags.DEFINE_integer("items", 100_000, "Synthetic items.")
flags.DEFINE_integer("users", 20_000, "Synthetic users.")
flags.DEFINE_integer("steps", 200, "Retrieval training steps before mining.")
flags.DEFINE_integer("probe", 8192, "Anchors mined exactly to extrapolate mining them all.")
flags.DEFINE_integer("max_examples", RankingConfig.max_examples, "The sample's size.")
flags.DEFINE_bool("ann", True, "Also mine the sample through ScaNN.")
flags.DEFINE_string("workdir", None, "A run this script trained before (its log says "
                    "where): reuse it instead of preparing and training again.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS


def _timed(fn):
  """(result, wall seconds); CPU seconds of this process go to ``_CPU`` under the same key,
  since on a shared machine wall time also counts the neighbours."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  _CPU.append(round(time.process_time() - cpu, 2))
  return out, round(time.perf_counter() - start, 2)


_CPU: list = []


def main(_):
  data_config = DataConfig(dataset="synthetic", synthetic_users=FLAGS.users,
                           synthetic_items=FLAGS.items,
                           synthetic_interactions=FLAGS.interactions)
  config = Config(data=data_config, train=TrainConfig(
      batch_size=1024, epochs=1, step_limit=FLAGS.steps, progress=False,
      eval_ks=(10, 20, 100)))
  report: dict = {"interactions": FLAGS.interactions, "items": FLAGS.items,
                  "users": FLAGS.users}
  workdir = FLAGS.workdir
  if workdir is None:
    data, report["prepare_s"] = _timed(
        lambda: prepare_lib.prepare(prepare_lib.load_raw(data_config), data_config))
    workdir = tempfile.mkdtemp(prefix="bench_mining_")
    print(f"training in {workdir}", file=sys.stderr)
    _, report["train_s"] = _timed(lambda: train_job.train(config, workdir, data))
  run, report["load_trained_s"] = _timed(lambda: load_trained(workdir))
  data = run.data
  encoder = Encoder(run.model, run.data)
  corpus, report["encode_corpus_s"] = _timed(encoder.items)
  length = config.data.history_length
  anchors = int(np.sum(data.events.split == splits.TRAIN))
  report["anchors"] = anchors

  def mine(limit, search=None):
    c = RankingConfig(max_examples=limit)
    return ranking_mining.mine_training_examples(data, encoder, corpus, c, length,
                                                 search=search)
  probe, seconds = _timed(lambda: mine(FLAGS.probe))
  report["exact_probe"] = {"anchors": FLAGS.probe, "seconds": seconds}
  report["exact_all_estimate_s"] = round(seconds * anchors / FLAGS.probe, 1)
  exact, report["exact_sample_s"] = _timed(lambda: mine(FLAGS.max_examples))
  report["sample_anchors"] = min(anchors, FLAGS.max_examples)
  report["sample_examples_kept"] = int(len(exact.events))
  if FLAGS.ann:
    search, report["ann_build_s"] = _timed(lambda: ann_search(workdir, run, corpus))
    ann, report["ann_sample_s"] = _timed(lambda: mine(FLAGS.max_examples, search))
    # Recall of the exact top-N over the anchors both kept (reachability may differ).
    common, e_rows, a_rows = np.intersect1d(exact.events, ann.events, return_indices=True)
    hits = [len(np.intersect1d(exact.candidates[i], ann.candidates[j]))
            for i, j in zip(e_rows[:5000], a_rows[:5000])]
    report["ann_recall_of_exact_top_n"] = round(float(np.mean(hits)) / exact.candidates.shape[1], 4)
    report["ann_examples_kept"] = int(len(ann.events))
  del probe
  report["cpu_seconds_in_order"] = _CPU
  report["load_average_1min_at_end"] = os.getloadavg()[0]
  emit(report, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
