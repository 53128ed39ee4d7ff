"""The twotower-index job: a trained workdir's corpus -> a tuned searcher in <workdir>/index/."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from absl import logging

from twotower import fileio
from twotower import index as index_lib
from twotower.data.histories import latest_histories
from twotower.model.encoding import Encoder
from twotower.training import runner
from twotower.workdir import TrainedRun, Workdir, load_trained


def build_index(workdir: str, *, recall_target: float = 0.95,
                brute_force_below: int = 20000, force_brute_force: bool = False,
                num_tuning_queries: int = 1000, seed: int = 0,
                run: Optional[TrainedRun] = None) -> dict:
  """Encodes the corpus with the trained item tower, builds and tunes the searcher on real
  user queries, reports it on held-out ones, and writes ``<workdir>/index/`` atomically.
  ``run``: this workdir's already loaded ``TrainedRun`` (the pipeline's)."""
  run = run or load_trained(workdir)
  wd = Workdir(workdir)
  encoder = Encoder(run.model, run.data)
  embeddings = encoder.items()
  users, history = latest_histories(run.data, run.config.data.history_length)
  rng = np.random.default_rng(seed)
  pick = rng.permutation(len(users))[:2 * num_tuning_queries]
  queries = encoder.users(users[pick], history[pick])
  if len(queries) >= 2 * min(num_tuning_queries, 100):   # disjoint tuning / report queries
    half = len(queries) // 2
    tune_q, report_q = queries[:half], queries[half:]
  else:
    tune_q = report_q = queries
  index = index_lib.build_searcher(embeddings, recall_target=recall_target,
                                   sample_queries=tune_q, brute_force_below=brute_force_below,
                                   force_brute_force=force_brute_force)
  index.item_ids = run.data.item_vocab.tokens
  report: dict[str, Any] = (index_lib.measure(index, report_q) if len(report_q)
                            else {"kind": index.kind})
  with fileio.atomic_directory(wd.index) as tmp:
    meta = index_lib.save_index(index, tmp)
  size = sum(os.path.getsize(os.path.join(wd.index, *rel.split("/")))
             for rel in meta["files"] if rel.startswith(f"{index_lib.SEARCHER}/"))
  report.update(params=index.params, build_seconds=round(index.build_seconds, 3),
                fingerprint=meta["fingerprint"],
                index_bytes=size or int(index.embeddings.nbytes),
                float32_bytes=int(index.embeddings.nbytes),
                tuning_trials=len(index.tuning))
  report["index_to_float32"] = round(report["index_bytes"] / report["float32_bytes"], 3)
  runner.MetricsRecord(wd.metrics, "index").write(report)
  logging.info("index: %s", report)
  return report
