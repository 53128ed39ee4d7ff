"""The pipeline's stages at two sizes: wall time, peak RSS and how each grows with its work.

Runs the stages a ``twotower-pipeline`` run goes through, on synthetic data of
(interactions, items, users) = small (1M, 100k, 20k) and/or large (10M, 1M, 200k), through
the public job functions (data.prepare, jobs.train.train, jobs.train_ranking, jobs.index,
jobs.export, serving.Recommender), one after another in one process as the pipeline runs
them, with timing around each. Stages that happen inside a job are timed by hooks around
the interfaces the jobs call, not by copies of the code:

  validate   runner hook ``evaluate`` of the retrieval trainer (each validation pass)
  test       runner hook ``final_metrics`` (test, and validation again unless reused)
  refit      ``training.refit.refit`` where it exists (the selected recipe again on more
             of the data, inside train)
  mine       ``RankingTrainer.__init__`` (the retrieval top-N of the examples and of the
             held-out impressions, before the head trains; through the index built just
             before it, past ``ann_min_items``, as in the pipeline)
  reload     ``train_ranking``'s ``load_trained`` (the prepared data and the retrieval
             model, read back from the run directory)
  rank       the rest of ``train_ranking`` (the head's epochs and its evaluation)
  checkpoint ``Runner.save`` and ``Runner._mark_best`` of every trainer (rolling and best
             checkpoints; inside train, refit and rank, and left out of their times)
  load       ``Recommender.load`` of the export
  warm       the first ``--warm_queries`` requests after loading (they touch the tables'
             rows for the first time, a cost of the tables' size, not of the requests)
  serve      ``--serve_queries`` top-10 requests of known users after those, one at a time

Inside every stage the exact scores (``topk.for_each_chunk``: queries x items) and the users
and items encoded (``Encoder``) are counted, so each stage's time is set against the work
it did. Peak RSS: the process's high-water mark (VmHWM, reset through /proc/self/clear_refs
before each top-level stage), and for nested stages the maximum of a thread sampling VmRSS
every 10 ms. RSS includes what earlier stages left in memory (the prepared data), as it
does in a pipeline run.

Growth between two sizes: (time ratio) / (work ratio); 1.0 is linear in the stage's own work:
training in examples; evaluation in the exact scores it computes (sampled users x items);
mining in its retrieval queries x items, the exact cost its top-N would have (through the
ANN index it costs less); the head in the (user, item) pairs it scores, training (each
example with its npratio negatives, every epoch) and evaluation (``Scorer`` calls); the index
in items; export, reloading the run, loading the export and the first requests in items +
users; checkpoints in the bytes they write; serving in requests. Options that other jobs
may or may not have yet (``--eval_users``, ``--ranking_max_examples``) are passed only where
the config has them.

  python experiments/bench_scale.py                       # small
  python experiments/bench_scale.py --sizes=large --baseline=small.json --output=large.json
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import contextlib
import dataclasses
import functools
import glob
import json
import os
import shutil
import threading
import time

import numpy as np
from absl import app, flags, logging
from peak_memory import peak_rss_bytes, reset_peak_rss, status_bytes
from report import emit

from twotower import pipeline as pipeline_lib
from twotower import serving, topk
from twotower.config import Config, RankingConfig
from twotower.data import prepare as prepare_lib
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job
from twotower.jobs import train as train_job
from twotower.jobs import train_ranking as ranking_job
from twotower.model import encoding
from twotower.training import loop, ranking_eval, runner
from twotower.training import ranking as ranking_trainer
from twotower.workdir import Workdir

try:   # the refit after model selection, in versions that have it
  from twotower.training import refit as refit_lib
except ImportError:
  refit_lib = None

# (interactions, items, users); tiny is a smoke test of the benchmark itself.
SIZES = {"tiny": (60_000, 3_000, 2_000), "small": (1_000_000, 100_000, 20_000),
         "large": (10_000_000, 1_000_000, 200_000)}

flags.DEFINE_list("sizes", ["small"], f"Sizes to run, of {sorted(SIZES)}.")
flags.DEFINE_string("workdir_root", "/tmp/twotower_bench_scale", "Run directories go here "
                    "(one per size, replaced).")
flags.DEFINE_integer("batch_size", 1024, "Retrieval batch size.")
flags.DEFINE_integer("epochs", 1, "Retrieval epochs.")
flags.DEFINE_integer("step_limit", 0, "Retrieval steps (0: the epochs' worth).")
flags.DEFINE_integer("ranking_epochs", 3, "Ranking head epochs (its first includes tracing, so "
                     "one epoch would time mostly that).")
flags.DEFINE_integer("eval_users", None, "--eval_users, where the config has it.")
flags.DEFINE_integer("ranking_max_examples", None, "--ranking_max_examples, where the "
                     "ranking config has it.")
flags.DEFINE_integer("serve_queries", 1000, "Known users asked for a top-10 (one at a time).")
flags.DEFINE_integer("warm_queries", 200, "Requests of other known users first, timed as the "
                     "warm stage: the first requests after loading touch the tables' rows "
                     "for the first time.")
flags.DEFINE_bool("rank", True, "Run the ranking head (mine, rank).")
flags.DEFINE_string("baseline", None, "An earlier output of this benchmark whose sizes are "
                    "compared with this run's.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
FLAGS = flags.FLAGS

# What a stage's time is set against (the counters below), in order of preference.
WORK = {"prepare": ("interactions",), "train": ("train_examples",),
        "refit": ("train_examples",),
        "validate": ("exact_scores",), "test": ("exact_scores",),
        "mine": ("query_items",), "reload": ("items_and_users",), "rank": ("head_pairs",),
        "checkpoint": ("checkpoint_bytes",), "index": ("items",),
        "export": ("items_and_users",), "load": ("items_and_users",),
        "warm": ("items_and_users",), "serve": ("queries",)}


class Stages:
  """Wall time, peak RSS and work counters per stage; stages nest (validate in train)."""

  def __init__(self):
    self.records: dict[str, dict] = {}
    self._stack: list[str] = []
    self._sampled: dict[str, int] = {}
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()

  def _sample(self):
    while not self._done.wait(0.01):
      rss = status_bytes("VmRSS")
      with self._lock:
        for name in self._stack:
          self._sampled[name] = max(self._sampled.get(name, 0), rss)

  def close(self):
    self._done.set()
    self._thread.join()

  def count(self, counter: str, amount: int) -> None:
    """Adds work to the innermost running stage."""
    with self._lock:
      if self._stack:
        counters = self.records[self._stack[-1]].setdefault("counters", {})
        counters[counter] = counters.get(counter, 0) + int(amount)

  @contextlib.contextmanager
  def stage(self, name: str):
    top = not self._stack
    with self._lock:
      record = self.records.setdefault(name, {"seconds_with_nested": 0.0, "nested_seconds": 0.0,
                                              "calls": 0})
      parent = self._stack[-1] if self._stack else None
      self._stack.append(name)
      self._sampled[name] = max(self._sampled.get(name, 0), status_bytes("VmRSS"))
    hwm = top and reset_peak_rss()
    start = time.perf_counter()
    try:
      yield record
    finally:
      elapsed = time.perf_counter() - start
      with self._lock:
        self._stack.pop()
        record["seconds_with_nested"] += elapsed
        # A stage's own time leaves out the stages inside it (validate inside train).
        if parent is not None:
          self.records[parent]["nested_seconds"] += elapsed
        record["calls"] += 1
        peak = self._sampled[name]
        if hwm:
          peak, record["rss_from"] = max(peak, peak_rss_bytes()), "VmHWM"
        else:
          record.setdefault("rss_from", "VmRSS sampled every 10 ms")
        record["peak_rss_mb"] = max(record.get("peak_rss_mb", 0), round(peak / 2**20))
      # As each stage ends, so that a run cut short still shows what it measured.
      logging.info("bench_scale stage %s: %s", name, json.dumps(record))


def _hook(owner, name: str, wrapper_of):
  """Replaces owner.name by wrapper_of(original); returns an undo, or None if absent."""
  original = getattr(owner, name, None)
  if original is None:
    return None
  setattr(owner, name, functools.wraps(original)(wrapper_of(original)))
  return lambda: setattr(owner, name, original)


def _timed(stages: Stages, stage: str):
  def wrapper_of(original):
    def timed(*args, **kwargs):
      with stages.stage(stage):
        return original(*args, **kwargs)
    return timed
  return wrapper_of


def _counted(stages: Stages, counter: str, amount):
  def wrapper_of(original):
    def counted(*args, **kwargs):
      stages.count(counter, amount(*args, **kwargs))
      return original(*args, **kwargs)
    return counted
  return wrapper_of


def _checkpoint(stages: Stages, prefix_of):
  """Times a checkpoint write as the ``checkpoint`` stage and counts the bytes it wrote
  (``prefix_of(self)``: the written checkpoint's path prefix, read after the write)."""
  def wrapper_of(original):
    def timed(self, *args, **kwargs):
      with stages.stage("checkpoint"):
        result = original(self, *args, **kwargs)
        stages.count("checkpoint_bytes", sum(
            os.path.getsize(f) for f in glob.glob(glob.escape(prefix_of(self)) + ".*")))
      return result
    return timed
  return wrapper_of


def _counted_result(stages: Stages, counter: str):
  """Counts what the wrapped function returns (examples in a batch)."""
  def wrapper_of(original):
    def counted(*args, **kwargs):
      result = original(*args, **kwargs)
      stages.count(counter, result)
      return result
    return counted
  return wrapper_of


def install_hooks(stages: Stages) -> list:
  hooks = [
      _hook(loop.Trainer, "evaluate", _timed(stages, "validate")),
      _hook(loop.Trainer, "final_metrics", _timed(stages, "test")),
      # The refit (train + valid, or everything, after model selection), where it exists.
      _hook(refit_lib, "refit", _timed(stages, "refit")) if refit_lib else None,
      _hook(refit_lib.RefitTrainer, "final_metrics", _timed(stages, "test"))
      if refit_lib else None,
      _hook(loop.Trainer, "batch_examples", _counted_result(stages, "train_examples")),
      _hook(ranking_trainer.RankingTrainer, "__init__", _timed(stages, "mine")),
      _hook(ranking_job, "load_trained", _timed(stages, "reload")),
      _hook(runner.Runner, "save", _checkpoint(stages, lambda r: r.manager.latest_checkpoint)),
      _hook(runner.Runner, "_mark_best", _checkpoint(stages, lambda r: r.files.best)),
      _hook(ranking_eval.Scorer, "__call__", _counted(
          stages, "scored_pairs", lambda self, users, history, items: np.size(items))),
      # Exact scores: every evaluation, mining and brute-force search goes through it.
      _hook(topk, "for_each_chunk", _counted(
          stages, "exact_scores", lambda queries, corpus, *a, **k: len(queries)
          * corpus.num_items)),
      _hook(encoding.Encoder, "users", _counted(
          stages, "user_encodings", lambda self, user_ids, *a, **k: len(user_ids))),
      _hook(encoding.Encoder, "items", _counted(
          stages, "item_encodings", lambda self, item_ids=None: (
              self._data.num_items if item_ids is None else len(item_ids)))),
  ]
  missing = [name for name, undo in zip(
      ("Trainer.evaluate", "Trainer.final_metrics", "refit", "RefitTrainer.final_metrics",
       "Trainer.batch_examples", "RankingTrainer.__init__", "train_ranking.load_trained",
       "Runner.save", "Runner._mark_best", "Scorer.__call__",
       "topk.for_each_chunk", "Encoder.users", "Encoder.items"), hooks) if undo is None]
  if missing:
    logging.warning("bench_scale: no hook for %s (renamed?); those figures are missing",
                    missing)
  return [undo for undo in hooks if undo is not None]


def _has_field(cls, name: str) -> bool:
  return any(f.name == name for f in dataclasses.fields(cls))


def make_config(size: str) -> tuple[Config, dict, dict]:
  """The retrieval config, the ranking options, and which optional options were passed."""
  interactions, items, users = SIZES[size]
  config = Config()
  d, t = config.data, config.train
  d.dataset, d.synthetic_interactions = "synthetic", interactions
  d.synthetic_items, d.synthetic_users = items, users
  t.batch_size, t.epochs, t.step_limit, t.progress = (FLAGS.batch_size, FLAGS.epochs,
                                                      FLAGS.step_limit, False)
  passed = {}
  if FLAGS.eval_users is not None:
    if _has_field(type(t), "eval_users"):
      t.eval_users = FLAGS.eval_users
      passed["eval_users"] = FLAGS.eval_users
    else:
      passed["eval_users"] = "not in this version's TrainConfig: not passed"
  ranking = {"epochs": FLAGS.ranking_epochs, "progress": False, "seed": t.seed}
  if FLAGS.ranking_max_examples is not None:
    if _has_field(RankingConfig, "max_examples"):
      ranking["max_examples"] = FLAGS.ranking_max_examples
      passed["ranking_max_examples"] = FLAGS.ranking_max_examples
    else:
      passed["ranking_max_examples"] = "not in this version's RankingConfig: not passed"
  return config, ranking, passed


def run_size(size: str) -> dict:
  interactions, items, users = SIZES[size]
  config, ranking, passed = make_config(size)
  workdir = os.path.join(FLAGS.workdir_root, size)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  stages = Stages()
  undo = install_hooks(stages)
  started = time.perf_counter()
  try:
    with stages.stage("prepare"):
      data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
    with stages.stage("train"):
      log = train_job.train(config, workdir, data=data)
    del data
    with stages.stage("index"):   # before the head, whose mining reuses it (the pipeline's order)
      index_report = index_job.build_index(workdir)
    if FLAGS.rank:
      with stages.stage("rank"):
        rank_log = ranking_job.train_ranking(workdir, **ranking)
    with stages.stage("export"):
      export_dir = export_job.export(workdir, include_ranking=FLAGS.rank)
    with stages.stage("load"):
      recommender = serving.Recommender.load(export_dir)
    known = _known_users(workdir)
    with stages.stage("warm"):
      warm = _requests(recommender, known, FLAGS.warm_queries, seed=1)
    with stages.stage("serve"):
      serve = _requests(recommender, known, FLAGS.serve_queries, seed=0)
    serve["sample_items"] = len(pipeline_lib.sample_recommendations(
        recommender, known[0])["recommendations"])
    serve["cold_p50_ms"] = warm["p50_ms"]
  finally:
    for u in undo:
      u()
    stages.close()
  total = time.perf_counter() - started
  records = stages.records
  for record in records.values():
    record["seconds"] = record["seconds_with_nested"] - record.pop("nested_seconds")
  train_examples = records["train"].get("counters", {}).get("train_examples", 0)
  records["train"]["examples_per_second"] = round(train_examples / records["train"]["seconds"])
  records["train"]["examples_per_second_metrics_json"] = [
      round(e["examples_per_second"]) for e in log["epochs"]]
  if FLAGS.rank:
    examples = int(rank_log.get("examples", 0))
    rank_epochs = len(rank_log.get("epochs", []))
    counters = records["rank"].setdefault("counters", {})
    counters["ranking_examples"] = examples * max(rank_epochs, 1)
    counters["head_pairs"] = (counters["ranking_examples"] * (1 + rank_log["config"]["npratio"])
                              + counters.get("scored_pairs", 0))
    mine = records["mine"].setdefault("counters", {})
    mine["query_items"] = mine.get("user_encodings", 0) * items
  # The units that are the size itself, for every stage WORK sets against one of them.
  size_units = {"interactions": interactions, "items": items, "items_and_users": items + users}
  for name, record in records.items():
    for unit in WORK.get(name, ()):
      if unit in size_units:
        record.setdefault("counters", {})[unit] = size_units[unit]
  records["serve"].setdefault("counters", {})["queries"] = serve["queries"]
  for name, record in records.items():
    counters = record.get("counters", {})
    unit = next((c for c in WORK.get(name, ()) if counters.get(c)), None)
    if unit:
      record["work"], record["work_unit"] = counters[unit], unit
  return {
      "size": {"interactions": interactions, "items": items, "users": users},
      "config": {"batch_size": config.train.batch_size, "epochs": config.train.epochs,
                 "step_limit": config.train.step_limit, "ranking": ranking, "passed": passed},
      "total_seconds": round(total, 1),
      "pipeline_peak_rss_mb": max(r["peak_rss_mb"] for r in records.values()),
      "stages": {name: {k: (round(v, 2) if isinstance(v, float) else v)
                        for k, v in r.items()} for name, r in records.items()},
      "retrieval_test": {k: log["final"]["test"].get(k) for k in ("recall@50", "num_users")},
      "most_popular_test": {"recall@50": log["final"].get("most_popular_test", {})
                            .get("recall@50")},
      "index": {k: index_report[k] for k in ("kind", "recall@10", "qps_single", "qps_batched",
                                             "build_seconds") if k in index_report},
      "serve": serve,
  }


def _known_users(workdir: str) -> list[str]:
  with open(os.path.join(Workdir(workdir).vocab, "user_id.txt"), encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f][1:]


def _requests(recommender: serving.Recommender, users: list[str], count: int,
              seed: int) -> dict:
  """Top-10s of ``count`` random known users, one request each; their latencies."""
  rng = np.random.default_rng(seed)
  latencies = []
  for i in rng.choice(len(users), count):
    t = time.perf_counter()
    recommender.recommend({"user_id": users[i]}, k=10)
    latencies.append((time.perf_counter() - t) * 1e3)
  return {"queries": len(latencies),
          "p50_ms": round(float(np.percentile(latencies, 50)), 2),
          "p99_ms": round(float(np.percentile(latencies, 99)), 2)}


def growth(results: dict) -> dict:
  """Per stage, between each pair of sizes: (time ratio) / (work ratio)."""
  names = [s for s in SIZES if s in results]
  out = {}
  for a, b in zip(names, names[1:]):
    small, large = results[a]["stages"], results[b]["stages"]
    rows = {}
    for stage in WORK:
      if stage not in small or stage not in large:
        continue
      lo, hi = small[stage], large[stage]
      row = {"time_ratio": round(hi["seconds"] / max(lo["seconds"], 1e-9), 2),
             "rss_ratio": round(hi["peak_rss_mb"] / max(lo["peak_rss_mb"], 1), 2)}
      if lo.get("work_unit") and lo.get("work_unit") == hi.get("work_unit"):
        row["work_unit"] = lo["work_unit"]
        row["work_ratio"] = round(hi["work"] / lo["work"], 2)
        row["growth_over_linear"] = round(row["time_ratio"] / row["work_ratio"], 2)
      rows[stage] = row
    out[f"{a}_to_{b}"] = rows
  return out


def table(results: dict) -> str:
  """A Markdown table of every size's stages."""
  lines = ["| size | stage | seconds | peak RSS MB | work | unit | s per 1M units |",
           "|---|---|---|---|---|---|---|"]
  for size, result in results.items():
    for stage, r in result["stages"].items():
      work = r.get("work")
      per = f"{r['seconds'] / work * 1e6:.3g}" if work else ""
      lines.append(f"| {size} | {stage} | {r['seconds']:.1f} | {r['peak_rss_mb']} | "
                   f"{work or ''} | {r.get('work_unit', '')} | {per} |")
  return "\n".join(lines)


def main(argv):
  del argv
  unknown = set(FLAGS.sizes) - set(SIZES)
  if unknown:
    raise app.UsageError(f"--sizes: unknown {sorted(unknown)}; known: {sorted(SIZES)}")
  results = {}
  if FLAGS.baseline:
    with open(FLAGS.baseline) as f:
      results.update(json.load(f)["results"])
  for size in [s for s in SIZES if s in FLAGS.sizes]:
    results[size] = run_size(size)
    logging.info("bench_scale %s: %s", size, json.dumps(results[size]))
  results = {s: results[s] for s in SIZES if s in results}
  emit({"results": results, "growth": growth(results), "table": table(results)},
       FLAGS.output)


if __name__ == "__main__":
  app.run(main)
