"""One Recommender under concurrent load: same answers as single-threaded, flat memory.

``Recommender`` is documented as read-only after ``load`` so that one instance serves many
threads. A CI-sized version of experiments/bench_load.py: 8 threads send a mix of requests
(known users, unknown users with histories, exclusions, malformed ones) to a tiny ScaNN
export, every answer must equal the single-threaded one, and RSS must not grow with load.
"""
import os
import threading

import numpy as np
import pytest

from twotower import export_artifacts as export_lib
from twotower import serving

THREADS = 8
REQUESTS_PER_THREAD = 200
K = 10
# Must raise ValueError every time, from any thread: (user, k, exclude_items).
MALFORMED = [("not-a-dict", K, ()), ({"user_id": 1.5}, K, ()),
             ({"user_id": "u1", "no_such_field": "x"}, K, ()), ({"history": "i1 i2"}, K, ()),
             ({"user_id": "u1"}, -1, ()), ({"user_id": "u1"}, K, "i1")]


@pytest.fixture(scope="module")
def rec(tiny_scann_export):
  rec = serving.Recommender.load(tiny_scann_export)
  assert rec.index.searcher is not None   # the pybind ScaNN searcher is under load too
  return rec


def _requests(rec, n=120, seed=0) -> list:
  rng = np.random.default_rng(seed)
  users = rec.defaults["user_id"].astype(str)
  items = rec.item_ids.astype(str)
  out = []
  for i in range(n):
    user_id = users[rng.integers(len(users))]
    if i % 3 == 0:
      out.append(({"user_id": user_id}, K, ()))
    elif i % 3 == 1:
      exclude = rng.choice(items, int(rng.integers(1, 15)), replace=False).tolist()
      out.append(({"user_id": user_id}, K, exclude + ["not-an-item"]))
    else:
      history = rng.choice(items, int(rng.integers(0, 8)), replace=False).tolist()
      out.append(({"user_id": f"stranger-{i}", "history": history + ["unknown-item"]}, K, ()))
  return out + MALFORMED


def _answer(rec, request):
  user, k, exclude = request
  try:
    return rec.recommend(user, k=k, exclude_items=exclude)
  except ValueError as e:
    return ("rejected", str(e))


def _load(rec, requests, expected, per_thread=REQUESTS_PER_THREAD) -> dict:
  """THREADS threads x per_thread requests at once; counts differences from ``expected``."""
  counts = {"requests": 0, "errors": [], "mismatches": [], "rejections": 0}
  lock = threading.Lock()
  barrier = threading.Barrier(THREADS)

  def client(t):
    picks = np.random.default_rng(t).integers(len(requests), size=per_thread)
    done, errors, mismatches, rejections = 0, [], [], 0
    barrier.wait()
    for p in picks:
      try:
        got = _answer(rec, requests[p])
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"{type(e).__name__}: {e}")
        continue
      finally:
        done += 1
      if got != expected[p]:
        mismatches.append((p, got, expected[p]))
      elif isinstance(got, tuple):
        rejections += 1
    with lock:
      counts["requests"] += done
      counts["errors"] += errors
      counts["mismatches"] += mismatches
      counts["rejections"] += rejections

  threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return counts


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise AssertionError("no VmRSS in /proc/self/status")


def test_concurrent_answers_equal_single_threaded_and_memory_stays_flat(rec):
  requests = _requests(rec)
  expected = [_answer(rec, r) for r in requests]
  assert sum(isinstance(e, tuple) for e in expected) == len(MALFORMED)
  assert all(len(e) == K for e in expected if not isinstance(e, tuple))

  warm_up = _load(rec, requests, expected, per_thread=50)
  assert not warm_up["errors"] and not warm_up["mismatches"]
  before = _rss_mb()
  counts = _load(rec, requests, expected)
  after = _rss_mb()

  assert counts["requests"] == THREADS * REQUESTS_PER_THREAD
  assert counts["errors"] == [], counts["errors"][:5]
  assert counts["mismatches"] == [], counts["mismatches"][:3]
  assert counts["rejections"] > 0   # the malformed requests were sent, and refused
  assert after - before <= 50, f"RSS grew {after - before:.1f} MB under load"


def test_concurrent_batches_equal_single_threaded(rec):
  """recommend_batch from many threads at once equals the same batches asked one by one.

  Each thread sends its own batch compositions; a batch's answers are compared with that
  very batch answered single-threaded (a different composition may round the batched
  matmul differently and swap near-tied items, which is not a concurrency effect)."""
  valid = [r for r in _requests(rec, n=48, seed=1) if r[1] == K and r not in MALFORMED]

  def batches(t):
    order = np.random.default_rng(t).permutation(len(valid))
    return [order[start:start + 8] for start in range(0, len(order), 8)]

  def ask(rows):
    return rec.recommend_batch([valid[i][0] for i in rows], k=K,
                               exclude_items=[valid[i][2] for i in rows])

  expected = {t: [ask(rows) for rows in batches(t)] for t in range(THREADS)}
  results, errors = {}, []

  def client(t):
    try:
      results[t] = [ask(rows) for rows in batches(t)]
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors
  assert results == expected


@pytest.fixture(scope="module")
def other_export(tmp_path_factory):
  """The same tiny model trained with another seed: other weights, other answers."""
  from conftest import build_tiny_export
  return build_tiny_export(tmp_path_factory.mktemp("tiny_export_seed1"), seed=1)


def test_live_reload_while_serving_swaps_atomically_and_refuses_bad_exports(
    rec, tiny_scann_export, other_export, tmp_path):
  """Clients ask throughout; each answer is wholly one export's. Which one answers is known
  before and after every reload, and a failed reload leaves the previous one serving."""
  import shutil
  users = [{"user_id": str(u)} for u in rec.defaults["user_id"][:20]]
  v1 = [rec.recommend(u, k=K) for u in users]
  other = serving.Recommender.load(other_export)
  v2 = [other.recommend(u, k=K) for u in users]
  assert sum(a != b for a, b in zip(v1, v2)) >= len(users) // 2   # the two are told apart
  live = serving.LiveRecommender.load(tiny_scann_export)

  def answers():
    return [live.recommend(u, k=K) for u in users]

  stop, errors, served = threading.Event(), [], [0]

  def client():
    while not stop.is_set():
      try:
        for u, one, two in zip(users, v1, v2):
          assert live.recommend(u, k=K) in (one, two)    # never a mix of the two exports
          served[0] += 1
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
        return

  threads = [threading.Thread(target=client) for _ in range(4)]
  for thread in threads:
    thread.start()
  assert answers() == v1
  first = live.current
  assert live.reload(other_export) is first and live.current is not first
  assert answers() == v2
  broken = str(tmp_path / "broken")
  shutil.copytree(tiny_scann_export, broken)
  os.remove(os.path.join(broken, export_lib.MANIFEST))
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    live.reload(broken)
  assert answers() == v2                    # the failed reload left the seed-1 export serving
  live.reload(tiny_scann_export)
  assert answers() == v1
  stop.set()
  for thread in threads:
    thread.join()
  assert not errors and served[0] > 0
