"""The end-to-end job behind twotower-pipeline, importable for tests and notebooks."""
from __future__ import annotations

import os
from typing import Optional

from absl import logging

from twotower.config import Config
from twotower.workdir import Workdir, load_trained


def run_pipeline(config: Config, workdir: str, *, export_dir: Optional[str] = None,
                 sample_user_id: Optional[str] = None, rank: bool = True,
                 ranking_options: Optional[dict] = None) -> dict:
  """Trains, ranks (unless ``rank=False``), indexes, exports, and asks the export for one
  recommendation, re-ranked by the head when there is one. Every stage resumes or
  overwrites atomically, so a rerun after an interruption picks up where it stopped.

  ``ranking_options`` are RankingConfig fields for the ranking stage; its seed and progress
  bar default to the retrieval config's.

  The data is read and prepared once, and the trained run loaded once, for every stage.
  The index is built before the head, whose mining reuses it past ``ann_min_items``.
  """
  from twotower.jobs import train as train_job
  config.validate()   # before reading the data, as twotower-train does
  data = train_job.prepare_data(config, workdir)
  metrics = train_job.train(config, workdir, data)
  summary = {"workdir": workdir, "retrieval": metrics["final"]}
  from twotower import serving
  from twotower.jobs import export, index
  run = load_trained(workdir, data)
  index_report = index.build_index(workdir, run=run)
  if rank:
    from twotower.jobs.train_ranking import train_ranking
    options = {"progress": config.train.progress, "seed": config.train.seed,
               **(ranking_options or {})}
    summary["ranking"] = train_ranking(workdir, run=run, **options)["final"]
  summary["index"] = index_report
  export_dir = export.export(workdir, export_dir, include_ranking=rank, run=run)
  summary["export_dir"] = export_dir
  recommender = serving.Recommender.load(export_dir)
  user_id = sample_user_id or _sample_user(workdir)
  summary["sample"] = sample_recommendations(recommender, user_id)
  logging.info("sample recommendations for user %s: %s", user_id, summary["sample"])
  return summary


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
  with open(os.path.join(Workdir(workdir).vocab, "user_id.txt"), encoding="utf-8") as f:
    f.readline()
    return f.readline().rstrip("\n")
