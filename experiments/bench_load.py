"""Concurrent load on one Recommender: correctness under threads, throughput, memory.

``Recommender`` promises that everything after ``load`` is read-only, so one instance can
serve many threads. This checks it under sustained load: a mix of requests (known users by
id, unknown users with histories and features, requests with exclusions, and a few malformed
ones that must raise ValueError) is answered single-threaded first; then ``--threads``
threads each send ``--requests_per_thread`` requests drawn from the same mix, and every
answer is compared with the single-threaded one (items and scores, exactly). Reports the
request count, unexpected exceptions, mismatches (both must be 0), expected rejections, QPS,
latency percentiles and the process RSS (VmRSS) before and after the load, plus its peak
(VmHWM). Exits non-zero when anything was wrong. ``--norerank`` serves the retrieval order
even when the export has a ranking head.

  python experiments/bench_load.py --export_dir=/tmp/ml100k_run/export \
      --threads=8 --requests_per_thread=10000 --k=10 --output=/tmp/bench_load.json
"""
import json
import sys
import threading
import time

import numpy as np
import peak_memory
from absl import app, flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from twotower.serving import Recommender

flags.DEFINE_string("export_dir", None, "A twotower-export directory.")
flags.DEFINE_integer("threads", 8, "Concurrent client threads.")
flags.DEFINE_integer("requests_per_thread", 10000, "Requests each thread sends.")
flags.DEFINE_integer("k", 10, "Recommendations per request.")
flags.DEFINE_integer("distinct", 2000, "Distinct requests in the mix (answered single-"
                     "threaded first; the threads cycle through them).")
flags.DEFINE_bool("rerank", True, "Re-rank with the export's ranking head, if it has one.")
flags.DEFINE_integer("rerank_candidates", 100, "Candidates the ranking head re-ranks.")
flags.DEFINE_integer("seed", 0, "Random seed of the request mix.")
flags.DEFINE_string("output", None, "Also write the JSON report here.")
flags.mark_flag_as_required("export_dir")
FLAGS = flags.FLAGS

# Each must raise ValueError: (user, k, exclude_items).
MALFORMED = (
    ("not-a-dict", 10, ()),
    ({"user_id": 1.5}, 10, ()),
    ({"user_id": True}, 10, ()),
    ({"user_id": "1", "no_such_field": "x"}, 10, ()),
    ({"history": "1 2 3"}, 10, ()),
    ({"user_id": "1", "history": [None]}, 10, ()),
    ({"user_id": "1"}, -1, ()),
    ({"user_id": "1"}, 10, "42"),
)


def memory_mb() -> dict:
  """VmRSS and VmHWM (peak RSS) of this process, in MB."""
  return {key: round(peak_memory.status_bytes(key) / 2**20, 1) for key in ("VmRSS", "VmHWM")}


def request_mix(rec: Recommender, n: int, k: int, seed: int) -> list:
  """n (user, k, exclude_items) requests: a quarter each of known users by id, known users
  with exclusions, unknown users with histories (some unknown items, some features) and
  known users with an explicit history, plus every MALFORMED request once."""
  rng = np.random.default_rng(seed)
  user_ids = rec.defaults["user_id"].astype(str)
  histories = rec.defaults["history"].astype(str)
  items = rec.item_ids.astype(str)
  features = [name for name, _ in rec._features]  # pylint: disable=protected-access
  out = []
  for i in range(max(n - len(MALFORMED), 0)):
    row = int(rng.integers(len(user_ids)))
    kind = i % 4
    if kind == 0:
      out.append(({"user_id": user_ids[row]}, k, ()))
    elif kind == 1:
      seen = [h for h in histories[row] if h]
      extra = rng.choice(items, int(rng.integers(1, 20)), replace=False).tolist()
      out.append(({"user_id": user_ids[row]}, k, seen + extra + ["not-an-item"]))
    elif kind == 2:
      history = rng.choice(items, int(rng.integers(0, 30)), replace=False).tolist()
      history.insert(int(rng.integers(len(history) + 1)), "unknown-item")
      user = {"user_id": f"new-user-{i}", "history": history}
      for name in features:
        if rng.random() < 0.5:
          user[name] = str(rec.defaults[f"feature/{name}"][int(rng.integers(len(user_ids)))])
      out.append((user, k, ()))
    else:
      history = rng.choice(items, int(rng.integers(1, 10)), replace=False).tolist()
      out.append(({"user_id": user_ids[row], "history": history}, k, ()))
  out.extend(MALFORMED)
  order = rng.permutation(len(out))
  return [out[j] for j in order]


def answer(rec: Recommender, request) -> tuple:
  """('ok', results) or ('rejected', message); other exceptions propagate."""
  user, k, exclude = request
  try:
    return "ok", rec.recommend(user, k=k, exclude_items=exclude)
  except ValueError as e:
    return "rejected", str(e)


def run_load(rec: Recommender, requests: list, expected: list, threads: int,
             per_thread: int, seed: int = 0) -> dict:
  """Sends threads x per_thread requests concurrently; counts what differs from
  ``expected`` (the single-threaded answers)."""
  lock = threading.Lock()
  totals = {"requests": 0, "errors": 0, "mismatches": 0, "expected_rejections": 0}
  examples = []
  latencies = []
  barrier = threading.Barrier(threads + 1)

  def client(t: int) -> None:
    rng = np.random.default_rng([seed, t])
    picks = rng.integers(len(requests), size=per_thread)
    counts = dict.fromkeys(totals, 0)
    seconds = np.empty(per_thread)
    notes = []
    barrier.wait()
    for j, p in enumerate(picks):
      start = time.perf_counter()
      try:
        got = answer(rec, requests[p])
      except Exception as e:  # pylint: disable=broad-except
        got = ("error", f"{type(e).__name__}: {e}")
      seconds[j] = time.perf_counter() - start
      counts["requests"] += 1
      if got[0] == "error":
        counts["errors"] += 1
        notes.append(got[1][:300])
      elif got != expected[p]:
        counts["mismatches"] += 1
        notes.append(f"request {p}: {got!r:.200} != {expected[p]!r:.200}")
      elif got[0] == "rejected":
        counts["expected_rejections"] += 1
    with lock:
      for key, value in counts.items():
        totals[key] += value
      latencies.append(seconds)
      examples.extend(notes[:3])

  pool = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
  for thread in pool:
    thread.start()
  barrier.wait()
  start = time.perf_counter()
  for thread in pool:
    thread.join()
  wall = time.perf_counter() - start
  ms = np.concatenate(latencies) * 1e3 if latencies else np.zeros(1)
  return {**totals, "seconds": round(wall, 2), "qps": round(totals["requests"] / wall, 1),
          "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
          "examples": examples[:10]}


def main(argv):
  del argv
  memory = {"start": memory_mb()["VmRSS"]}
  t0 = time.perf_counter()
  rec = Recommender.load(FLAGS.export_dir, rerank=FLAGS.rerank,
                         rerank_candidates=FLAGS.rerank_candidates)
  load_seconds = time.perf_counter() - t0
  memory["after_model_load"] = memory_mb()["VmRSS"]
  requests = request_mix(rec, FLAGS.distinct, FLAGS.k, FLAGS.seed)
  t0 = time.perf_counter()
  expected = [answer(rec, r) for r in requests]
  single_seconds = time.perf_counter() - t0
  rejected = sum(e[0] == "rejected" for e in expected)
  missed = len(MALFORMED) - rejected   # a malformed request that was answered
  memory["before_concurrent"] = memory_mb()["VmRSS"]
  load = run_load(rec, requests, expected, FLAGS.threads, FLAGS.requests_per_thread,
                  FLAGS.seed)
  after = memory_mb()
  memory.update(after_concurrent=after["VmRSS"], peak=after["VmHWM"],
                concurrent_growth=round(after["VmRSS"] - memory["before_concurrent"], 1))
  report = {
      "export_dir": FLAGS.export_dir,
      "reranker": type(rec.reranker).__name__ if rec.reranker else None,
      "num_items": rec.index.num_items,
      "index_kind": rec.index.kind,
      "threads": FLAGS.threads,
      "requests_per_thread": FLAGS.requests_per_thread,
      "k": FLAGS.k,
      "distinct_requests": len(requests),
      "malformed_in_mix": len(MALFORMED),
      "missed_rejections": missed,
      "load_seconds": round(load_seconds, 2),
      "single_thread_qps": round(len(requests) / single_seconds, 1),
      **load,
      "rss_mb": memory,
  }
  text = json.dumps(report, indent=2)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")
  if load["errors"] or load["mismatches"] or missed:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
