"""The end-to-end job behind twotower-pipeline, importable for tests and notebooks."""
from __future__ import annotations

import os
from typing import Optional

from absl import logging

from twotower import stage_process
from twotower.config import Config


def run_pipeline(config: Config, workdir: str, *, export_dir: Optional[str] = None,
                 sample_user_id: Optional[str] = None, rank: bool = True,
                 ranking_options: Optional[dict] = None, isolate_stages: bool = True) -> dict:
  """Trains, indexes, ranks (unless ``rank=False``), exports, and asks the export for one
  recommendation, re-ranked by the head when there is one. Every stage resumes or
  overwrites atomically, so a rerun after an interruption picks up where it stopped.

  ``ranking_options`` are RankingConfig fields for the ranking stage; its seed and progress
  bar default to the retrieval config's.

  The data is read and prepared once, by training, which stores the arrays in the run
  directory; the later stages load them from there. The index is built before the head,
  whose mining reuses it past ``ann_min_items``. ``isolate_stages``: training, the index
  with the head, and the export each run in a process of their own, which gives its memory
  back when it ends (twotower/stage_process.py says why); False runs them in this process
  (a debugger). This process imports TensorFlow only for the sample, after the stages. A
  script that calls this must keep its work under ``if __name__ == "__main__":``, as for
  any spawned process (the child imports the script's module); notebooks need nothing.
  """
  config.validate()   # before reading the data, as twotower-train does
  options = {"progress": config.train.progress, "seed": config.train.seed,
             **(ranking_options or {})}

  def stage(name, fn, *args):
    return stage_process.run_in_process(name, fn, *args) if isolate_stages else fn(*args)

  summary: dict = {"workdir": workdir, "retrieval": stage("training", train_stage, config,
                                                          workdir)}
  index_report, ranking = stage("index and ranking", index_and_rank_stage, workdir,
                                options if rank else None)
  if ranking is not None:
    summary["ranking"] = ranking
  summary["index"] = index_report
  export_dir = stage("export", export_stage, workdir, export_dir, rank)
  summary["export_dir"] = export_dir
  from twotower import serving
  recommender = serving.Recommender.load(export_dir)
  user_id = sample_user_id or _sample_user(workdir)
  summary["sample"] = sample_recommendations(recommender, user_id)
  logging.info("sample recommendations for user %s: %s", user_id, summary["sample"])
  return summary


def train_stage(config: Config, workdir: str) -> dict:
  """Prepares the data (stored in the run directory), trains and refits; the final metrics."""
  from twotower.jobs import train as train_job
  return train_job.train(config, workdir)["final"]


def index_and_rank_stage(workdir: str, ranking_options: Optional[dict]) -> tuple:
  """The index, then the head on the same loaded run (``ranking_options`` None: no head);
  the index's report and the head's final metrics (or None)."""
  from twotower.jobs import index
  from twotower.workdir import load_trained
  run = load_trained(workdir)
  index_report = index.build_index(workdir, run=run)
  if ranking_options is None:
    return index_report, None
  from twotower.jobs.train_ranking import train_ranking
  return index_report, train_ranking(workdir, run=run, **ranking_options)["final"]


def export_stage(workdir: str, export_dir: Optional[str], rank: bool) -> str:
  from twotower.jobs import export
  return export.export(workdir, export_dir, include_ranking=rank)


def sample_recommendations(recommender, user_id: str, k: int = 10) -> dict:
  """One user's top-k as {"item_id", "score"} dicts, with the item's title under
  "features" when the item table has a title-like column, so a person can judge them."""
  title = recommender.title_column
  recs = recommender.recommend({"user_id": user_id}, k=k,
                               with_features=[title] if title else False)
  if not title:
    recs = [{"item_id": item, "score": score} for item, score in recs]
  return {"user_id": user_id, "recommendations": recs}


def _sample_user(workdir: str) -> str:
  from twotower.workdir import Workdir
  with open(os.path.join(Workdir(workdir).vocab, "user_id.txt"), encoding="utf-8") as f:
    f.readline()
    return f.readline().rstrip("\n")
