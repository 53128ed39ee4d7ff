"""The twotower-index job: a trained workdir's corpus -> a tuned searcher in <workdir>/index/,
built from scratch or updated from an earlier run's index (``update_from``)."""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np
from absl import logging

from twotower import fileio
from twotower import index as index_lib
from twotower.data.histories import latest_histories
from twotower.errors import UserError
from twotower.index import update as update_lib
from twotower.model.encoding import Encoder
from twotower.training import runner
from twotower.workdir import TrainedRun, Workdir, load_trained

# Measured with experiments/bench_index_update.py (1M x 64): vectors kept stale cost recall
# (1% changed: a drift of 1e-6 in cosine distance kept stale -0.002 recall@10, 1e-5 -0.008,
# 1e-4 -0.019), so only float noise counts as unchanged; up to 20% of rows changed (the
# largest fraction measured) the update kept recall@10 within 0.006 of a rebuild and cost
# 6.6x (20%) to 13x (1%) less CPU time.
DEFAULT_UPDATE_TOLERANCE = 1e-6
DEFAULT_UPDATE_MAX_CHANGED_FRACTION = 0.2


def build_index(workdir: str, *, recall_target: float = 0.95,
                brute_force_below: int = 20000, force_brute_force: bool = False,
                num_tuning_queries: int = 1000, seed: int = 0,
                update_from: Optional[str] = None,
                update_tolerance: float = DEFAULT_UPDATE_TOLERANCE,
                update_max_changed_fraction: float = DEFAULT_UPDATE_MAX_CHANGED_FRACTION,
                run: Optional[TrainedRun] = None) -> dict:
  """Encodes the corpus with the trained item tower, builds and tunes the searcher on real
  user queries, reports it on held-out ones, and writes ``<workdir>/index/`` atomically.

  ``update_from``: a run directory whose index is updated to this run's corpus instead
  (items added, deleted, moved by more than ``update_tolerance`` in cosine distance), its
  tuned knobs kept; when more than ``update_max_changed_fraction`` of its rows would change,
  or a rebuild would pick another kind of index, it is rebuilt as without it. ``run``: this
  workdir's already loaded ``TrainedRun`` (the pipeline's).
  """
  if not 0 <= update_tolerance < 2:
    raise UserError(f"--update_tolerance must be in [0, 2), got {update_tolerance}")
  if not 0 <= update_max_changed_fraction:
    raise UserError(f"--update_max_changed_fraction must be >= 0, got "
                    f"{update_max_changed_fraction}")
  run = run or load_trained(workdir)
  wd = Workdir(workdir)
  encoder = Encoder(run.model, run.data)
  embeddings = encoder.items()
  item_ids = run.data.item_vocab.tokens
  load_start = time.perf_counter()
  old = _load_old_index(update_from, embeddings.shape[1]) if update_from else None
  load_seconds = time.perf_counter() - load_start
  users, history = latest_histories(run.data, run.config.data.history_length)
  rng = np.random.default_rng(seed)
  pick = rng.permutation(len(users))[:2 * num_tuning_queries]
  queries = encoder.users(users[pick], history[pick])
  if len(queries) >= 2 * min(num_tuning_queries, 100):   # disjoint tuning / report queries
    half = len(queries) // 2
    tune_q, report_q = queries[:half], queries[half:]
  else:
    tune_q = report_q = queries
  start = time.perf_counter()
  update: Optional[dict[str, Any]] = None
  index = None
  if update_from and old is not None and old.item_ids is not None:   # ids: checked on load
    d = update_lib.diff(old.item_ids, old.embeddings, item_ids, embeddings, update_tolerance)
    kind = (index_lib.BRUTE_FORCE if force_brute_force or len(embeddings) < brute_force_below
            else index_lib.SCANN)
    update = {"from": os.path.abspath(update_from), **d.counts(),
              "changed_fraction": round(d.changed_fraction, 6),
              "tolerance": update_tolerance,
              "max_changed_fraction": update_max_changed_fraction}
    if kind != old.kind:
      update.update(mode="rebuild", reason=f"a rebuild picks a {kind} index, {update_from}'s "
                    f"is {old.kind}")
    elif d.changed_fraction > update_max_changed_fraction:
      update.update(mode="rebuild", reason=(
          f"{d.changed_fraction:.2%} of its rows changed, above --update_max_changed_fraction="
          f"{update_max_changed_fraction:g}"))
    else:
      index = update_lib.apply(old, item_ids, embeddings, d)
      update.update(mode="update", reason=(
          f"{d.changed_fraction:.2%} of its rows changed, within "
          f"--update_max_changed_fraction={update_max_changed_fraction:g}"),
          stale_max_cosine_distance=round(d.kept_max_distance, 6))
  if index is None:
    index = index_lib.build_searcher(embeddings, recall_target=recall_target,
                                     sample_queries=tune_q,
                                     brute_force_below=brute_force_below,
                                     force_brute_force=force_brute_force)
    index.item_ids = item_ids
  seconds = time.perf_counter() - start + load_seconds   # an update includes loading the old
  report: dict[str, Any] = (index_lib.measure(index, report_q) if len(report_q)
                            else {"kind": index.kind})
  if update is not None:
    update["seconds"] = round(seconds, 3)
    if len(report_q):   # against exact search over this run's vectors, stale ones replaced
      k = min(10, index.num_items)
      exact = index_lib.Index(index_lib.BRUTE_FORCE, update_lib.aligned(
          index, item_ids, embeddings)).search(report_q, k, exact=True)[0]
      update["recall@10"] = round(index_lib.recall(index.search(report_q, k)[0], exact), 4)
    logging.info("index: %s from %s (%s; added %d, deleted %d, moved %d, unchanged %d) in "
                 "%.1fs", "updated" if update["mode"] == "update" else "rebuilt",
                 update_from, update["reason"], update["added"], update["deleted"],
                 update["moved"], update["unchanged"], seconds)
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
  if update is not None:
    report["update"] = update
  runner.MetricsRecord(wd.metrics, "index").write(report)
  logging.info("index: %s", report)
  return report


def _load_old_index(run_dir: str, dim: int) -> index_lib.Index:
  """The index of the run to update from, checked to be one this run's can follow."""
  path = Workdir(run_dir).index
  if not os.path.isfile(os.path.join(path, index_lib.INDEX_JSON)):
    raise UserError(f"--update_from={run_dir} holds no candidate index ({path}); build one "
                    f"with twotower-index --workdir={run_dir}, or drop --update_from")
  old = index_lib.load_index(path)
  if old.item_ids is None:
    raise UserError(f"--update_from={run_dir}: its index has no item ids to match items by; "
                    f"drop --update_from to rebuild")
  if old.embeddings.shape[1] != dim:
    raise UserError(f"--update_from={run_dir}: its index holds {old.embeddings.shape[1]}-"
                    f"dimensional embeddings, this run's are {dim}-dimensional; drop "
                    f"--update_from to rebuild")
  return old
