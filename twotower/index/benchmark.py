"""Measures an index against exact search on the same queries: recall@k, and the queries per
second of the index and of exact brute force (``twotower.topk``) side by side."""
from __future__ import annotations

import math
import time

import numpy as np


def hits(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
  """Per row, how many of the exact top-k rows the approximate ones found (-1: none)."""
  return np.array([len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)])


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean |approx_b ∩ exact_b| / |exact_b| over rows (the ANN-vs-exact recall@k)."""
  return float(np.sum(hits(approx, exact)) / max(exact.size, 1))


def _timed(fn, repeats: int) -> float:
  """Best-of-``repeats`` wall time of fn(): the least disturbed measurement."""
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def measure(index, queries: np.ndarray, *, ks=(10, 100),
            single_queries: int = 200, brute_force_single_queries: int = 50,
            repeats: int = 3) -> dict:
  """Recall@k of ``index`` (a searcher.Index) against exact search, and QPS of the index
  and of exact brute force measured side by side on the same queries (single-query loop,
  and one batched call). For a brute-force index both are the same search: speedup ~1."""
  queries = np.ascontiguousarray(queries, np.float32)
  out = {"kind": index.kind, "num_items": index.num_items,
         "dim": int(index.embeddings.shape[1]), "num_queries": len(queries)}
  k = min(ks[0], index.num_items)
  # Exact search is the slow side at scale (about 2.5 s per 1,000 queries over 1M items), so
  # each k's runs once, and the first one's wall time is also the batched brute-force
  # figure; only where it is short enough to be noisy is it timed again, best of repeats.
  exact_seconds = 0.0
  for i, kk in enumerate(ks):
    k_eff = min(kk, index.num_items)
    start = time.perf_counter()
    exact, _ = index.search(queries, k_eff, exact=True)
    if i == 0:
      exact_seconds = time.perf_counter() - start
    approx, _ = index.search(queries, k_eff)
    out[f"recall@{kk}"] = round(recall(approx, exact), 4)
  if exact_seconds < 1.0:
    exact_seconds = _timed(lambda: index.search(queries, k, exact=True), repeats)
  single = queries[:single_queries]
  if index.searcher is not None:
    leaves, depth = index.params["leaves_to_search"], index.pre_reorder_for(k)
    search_one = lambda: [index.searcher.search(q, k, depth, leaves) for q in single]
  else:
    search_one = lambda: [index.search(q[None], k) for q in single]
  out["qps_single"] = round(len(single) / _timed(search_one, repeats), 1)
  out["qps_batched"] = round(len(queries) / _timed(lambda: index.search(queries, k), repeats), 1)
  bf_single = queries[:brute_force_single_queries]
  out["brute_force_qps_single"] = round(len(bf_single) / _timed(
      lambda: [index.search(q[None], k, exact=True) for q in bf_single], repeats), 1)
  out["brute_force_qps_batched"] = round(len(queries) / exact_seconds, 1)
  out["speedup_single"] = round(out["qps_single"] / out["brute_force_qps_single"], 2)
  out["speedup_batched"] = round(out["qps_batched"] / out["brute_force_qps_batched"], 2)
  return out
