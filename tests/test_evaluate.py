"""Exact retrieval metrics against a brute-force reference: ties, exclusions, chunking."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest
import threadpoolctl

from twotower import evaluate, topk
from twotower.data.itemsets import ItemSets

# -- brute-force reference -----------------------------------------------------------------


def _ranking(scores: np.ndarray, excluded: set) -> list:
  """All non-excluded items, best first, equal scores by lower index (a stable sort)."""
  order = np.argsort(-scores, kind="stable")
  return [int(j) for j in order if int(j) not in excluded]


def reference_metrics(queries, items, targets, exclude, ks):
  scores = queries.astype(np.float64) @ items.astype(np.float64).T
  sums = {name: 0.0 for name in _metric_names(ks)}
  evaluated = skipped = 0
  for u in range(len(queries)):
    excluded = set(exclude[u]) if exclude is not None else set()
    relevant = set(targets[u]) - excluded
    if not relevant:
      skipped += 1
      continue
    evaluated += 1
    ranking = _ranking(scores[u], excluded)
    for k in ks:
      top = ranking[:k]
      gains = [1.0 if j in relevant else 0.0 for j in top]
      ideal = min(k, len(relevant))
      sums[f"recall@{k}"] += sum(gains) / ideal
      sums[f"hit_rate@{k}"] += float(any(gains))
      dcg = sum(g / np.log2(p + 2) for p, g in enumerate(gains))
      sums[f"ndcg@{k}"] += dcg / sum(1 / np.log2(p + 2) for p in range(ideal))
    first = next(p for p, j in enumerate(ranking) if j in relevant)
    sums["mrr"] += 1.0 / (first + 1)
  out = {name: value / max(evaluated, 1) for name, value in sums.items()}
  out["num_users"] = evaluated
  out["num_users_skipped"] = skipped
  return out


def reference_top_k(queries, items, k, exclude):
  scores = queries.astype(np.float64) @ items.astype(np.float64).T
  indices = np.full((len(queries), k), -1, np.int64)
  values = np.full((len(queries), k), -np.inf)
  for u in range(len(queries)):
    ranking = _ranking(scores[u], set(exclude[u]) if exclude is not None else set())[:k]
    indices[u, :len(ranking)] = ranking
    values[u, :len(ranking)] = scores[u, ranking]
  return indices, values


def _metric_names(ks):
  return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit_rate")] + ["mrr"]


def assert_metrics_close(got, want):
  assert set(got) == set(want)
  for name, value in want.items():
    assert got[name] == pytest.approx(value, abs=1e-6), name


# -- data ----------------------------------------------------------------------------------


def random_case(seed, num_users=60, num_items=50, dim=3):
  """Small-integer embeddings (many exactly tied scores), targets overlapping exclusions."""
  rng = np.random.default_rng(seed)
  queries = rng.integers(-2, 3, (num_users, dim)).astype(np.float32)
  items = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
  targets, exclude = [], []
  for u in range(num_users):
    targets.append(rng.choice(num_items, rng.integers(0, 6), replace=False).tolist())
    excluded = rng.choice(num_items, rng.integers(0, 12), replace=False).tolist()
    if u % 7 == 3 and targets[u]:   # every target excluded: the user must be skipped
      excluded += targets[u]
    elif u % 5 == 1 and targets[u]:   # some targets excluded
      excluded.append(targets[u][0])
    exclude.append(excluded)
  return queries, items, targets, exclude


MODES = ("plain", "blocked", "row_count", "blocked_threads", "small_top_k_steps", "tf",
         "tf_blocked")


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
  """Each internal path: plain or two-stage top-k (numpy, the CPU path; or TensorFlow, the
  accelerator path), numpy counts by row blocks or single rows, chunks inline or on
  worker threads, the plain numpy top-k a few rows at a time."""
  if request.param in ("blocked", "tf_blocked", "blocked_threads"):
    monkeypatch.setattr(topk, "_BLOCK", 3)
    monkeypatch.setattr(topk, "_MIN_BLOCKS_PER_K", 1)
  if request.param in ("row_count", "blocked_threads"):
    monkeypatch.setattr(evaluate, "_COUNT_TASK_ELEMENTS", 1)
  if request.param == "blocked_threads":   # chunks of one query on 3 workers
    monkeypatch.setattr(topk.cpus_lib, "available", lambda: 3)
    monkeypatch.setattr(topk, "_MIN_WORKER_ROWS", 1)
  if request.param == "small_top_k_steps":
    monkeypatch.setattr(topk, "_TOP_K_ELEMENTS", 120)
  if request.param.startswith("tf"):
    monkeypatch.setattr(topk, "_use_tf", lambda: True)
  return request.param


# -- retrieval_metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("ks", [(1, 5, 10, 60), (1, 2, 5)])   # 60 > N; (1, 2, 5) gets blocked
def test_matches_reference_for_every_chunk_size(mode, ks):
  queries, items, targets, exclude = random_case(seed=len(ks))
  want = reference_metrics(queries, items, targets, exclude, ks)
  assert want["num_users_skipped"] > 0 and want["num_users"] > 0
  results = []
  for chunk_elements in (1, 7 * len(items), 16 * len(items) + 3, 1 << 25):
    got = evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                                     ItemSets.from_lists(exclude), ks=ks,
                                     max_chunk_elements=chunk_elements)
    assert_metrics_close(got, want)
    results.append(got)
  assert all(r == results[0] for r in results)   # identical, not just close


def test_blocked_top_k_is_exact_on_a_larger_tied_corpus(monkeypatch):
  monkeypatch.setattr(topk, "_BLOCK", 4)
  monkeypatch.setattr(topk, "_MIN_BLOCKS_PER_K", 2)
  queries, items, targets, exclude = random_case(seed=7, num_users=40, num_items=301, dim=2)
  ks = (3, 10, 20)
  assert topk._block_size(len(items), max(ks))
  got = evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                                   ItemSets.from_lists(exclude), ks=ks, max_chunk_elements=3000)
  assert_metrics_close(got, reference_metrics(queries, items, targets, exclude, ks))
  indices, _ = topk.top_k_items(queries, items, 20, ItemSets.from_lists(exclude),
                                max_chunk_elements=3000)
  np.testing.assert_array_equal(indices, reference_top_k(queries, items, 20, exclude)[0])


def test_real_valued_embeddings_without_exclusions():
  rng = np.random.default_rng(3)
  queries = rng.standard_normal((30, 8)).astype(np.float32)
  items = rng.standard_normal((200, 8)).astype(np.float32)
  targets = [rng.choice(200, 3, replace=False).tolist() for _ in range(30)]
  got = evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets), ks=(10, 50))
  assert_metrics_close(got, reference_metrics(queries, items, targets, None, (10, 50)))


def test_hand_computed_example():
  # Scores 3, 2, 2, 1 (items 0..3); the tie between items 1 and 2 goes to item 1.
  items = np.array([[3.0], [2.0], [2.0], [1.0]], np.float32)
  queries = np.ones((3, 1), np.float32)
  targets = ItemSets.from_lists([[2, 3], [0], [1]])
  exclude = ItemSets.from_lists([[0], [0], []])   # user 1's only target is excluded
  got = evaluate.retrieval_metrics(queries, items, targets, exclude, ks=(1, 2))
  # User 0 ranks 1, 2, 3: targets at positions 2 and 3. User 2 ranks 0, 1, ...: target at 2.
  assert got["num_users"] == 2 and got["num_users_skipped"] == 1
  assert got["hit_rate@1"] == 0.0
  assert got["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)
  assert got["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)
  ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
  assert got["ndcg@2"] == pytest.approx((ndcg_user0 + 1 / np.log2(3)) / 2)


def test_no_user_left_to_evaluate():
  got = evaluate.retrieval_metrics(np.ones((2, 1), np.float32), np.ones((3, 1), np.float32),
                                   ItemSets.from_lists([[], [1]]), ItemSets.from_lists([[], [1]]),
                                   ks=(5,))
  assert got["num_users"] == 0 and got["num_users_skipped"] == 2
  assert got["recall@5"] == got["mrr"] == 0.0


def test_duplicate_targets_count_once():
  items = np.eye(4, dtype=np.float32)
  queries = items[:1]
  got = evaluate.retrieval_metrics(queries, items, ItemSets.from_lists([[0, 0, 3]]), ks=(1,))
  assert got["recall@1"] == 1.0   # two distinct targets, min(K=1, 2) = 1


@pytest.mark.parametrize("use_tf", [False, True])
def test_no_score_matrix_exceeds_the_chunk_limit(monkeypatch, use_tf):
  """The scores held at once, over every worker's buffer, stay within max_chunk_elements."""
  seen = {}   # thread -> largest score matrix it held (one buffer per worker)
  monkeypatch.setattr(topk, "_use_tf", lambda: use_tf)
  monkeypatch.setattr(topk.cpus_lib, "available", lambda: 3)
  monkeypatch.setattr(topk, "_MIN_WORKER_ROWS", 2)

  def record(size):
    thread = threading.get_ident()
    seen[thread] = max(seen.get(thread, 0), size)

  if use_tf:
    original = topk._score_chunk

    def spy(queries, items_t, *args):
      record(int(queries.shape[0]) * int(items_t.shape[1]))
      return original(queries, items_t, *args)

    monkeypatch.setattr(topk, "_score_chunk", spy)
  else:
    original = topk._top_k
    # Workers pull chunks from a shared iterator, so on a loaded machine one of them could
    # take every chunk before the others start. Each worker's first chunk waits until all
    # three hold one: the split is then certain, and a single worker breaks the barrier.
    all_started = threading.Barrier(3, timeout=60)

    def spy(scores, *args):
      if threading.get_ident() not in seen:
        all_started.wait()
      record(scores.size)
      return original(scores, *args)

    monkeypatch.setattr(topk, "_top_k", spy)
  queries, items, targets, exclude = random_case(seed=1)
  evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                             ItemSets.from_lists(exclude), max_chunk_elements=10 * len(items))
  assert len(seen) == (1 if use_tf else 3)   # numpy splits the rows over the workers
  assert sum(seen.values()) <= 10 * len(items)


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch):
  monkeypatch.setattr(topk.cpus_lib, "available", lambda: 2)
  monkeypatch.setattr(topk, "_MIN_WORKER_ROWS", 1)
  calls = []
  original = topk._top_k

  def failing(scores, *args):
    calls.append(1)
    if len(calls) == 3:
      raise FloatingPointError("boom in a worker")
    return original(scores, *args)

  monkeypatch.setattr(topk, "_top_k", failing)
  queries, items, targets, exclude = random_case(seed=1)
  with pytest.raises(FloatingPointError, match="boom in a worker"):
    evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                               ItemSets.from_lists(exclude), max_chunk_elements=2 * len(items))
  assert len(calls) < len(queries)   # the workers stopped instead of scoring every chunk


def test_overlapping_evaluations_keep_the_blas_limit_and_restore_it(monkeypatch):
  """Worker threads limit numpy's BLAS for the evaluation only, even when evaluations in
  several threads overlap."""
  monkeypatch.setattr(topk.cpus_lib, "available", lambda: 2)
  monkeypatch.setattr(topk, "_MIN_WORKER_ROWS", 1)

  def blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"]

  before = blas_threads()
  seen = []
  original = topk._top_k

  def spy(*args):
    seen.append(blas_threads())
    time.sleep(0.002)   # keep the evaluations overlapping
    return original(*args)

  monkeypatch.setattr(topk, "_top_k", spy)
  queries, items, targets, exclude = random_case(seed=3)

  def run(_):
    return evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                                      ItemSets.from_lists(exclude),
                                      max_chunk_elements=4 * len(items))

  want = run(None)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = list(pool.map(run, range(6)))
  assert all(r == want for r in results)
  assert seen and all(threads == [1] * len(before) for threads in seen)   # 2 cpus / 2 workers
  assert blas_threads() == before


def test_progress_bar(capsys):
  queries, items, targets, _ = random_case(seed=2)
  evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets), ks=(5,),
                             max_chunk_elements=20 * len(items), progress=True)
  assert "chunk" in capsys.readouterr().out


def test_rejects_mismatched_inputs():
  q, items = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="rows"):
    evaluate.retrieval_metrics(q, items, ItemSets.from_lists([[0]]))
  with pytest.raises(ValueError, match="outside"):
    evaluate.retrieval_metrics(q, items, ItemSets.from_lists([[0], [4]]))
  with pytest.raises(ValueError, match="same D"):
    evaluate.retrieval_metrics(q, np.ones((4, 2), np.float32), ItemSets.from_lists([[0], [1]]))
  with pytest.raises(ValueError, match="ks"):
    evaluate.retrieval_metrics(q, items, ItemSets.from_lists([[0], [1]]), ks=(0,))


# -- top_k_items ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 50, 64])   # 50 = N, 64 > N
def test_top_k_items_matches_reference(mode, k):
  queries, items, _, exclude = random_case(seed=k)
  want_indices, want_scores = reference_top_k(queries, items, k, exclude)
  for chunk_elements in (1, 9 * len(items), 1 << 25):
    indices, scores = topk.top_k_items(queries, items, k, ItemSets.from_lists(exclude),
                                       max_chunk_elements=chunk_elements)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert indices.shape == scores.shape == (len(queries), k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_all_scores_tied(mode):
  # Every score equal: more ties than top-k slots in both stages of the blocked top-k, so
  # the lowest indices must win everywhere, and every target's rank is its index among the
  # items left.
  items = np.ones((40, 2), np.float32)
  queries = np.ones((3, 2), np.float32)
  exclude = [[0, 5], [], list(range(0, 40, 2))]
  indices, _ = topk.top_k_items(queries, items, 12, ItemSets.from_lists(exclude))
  np.testing.assert_array_equal(indices, reference_top_k(queries, items, 12, exclude)[0])
  targets = [[30], [39, 7], [33]]
  got = evaluate.retrieval_metrics(queries, items, ItemSets.from_lists(targets),
                                   ItemSets.from_lists(exclude), ks=(5, 10))
  assert_metrics_close(got, reference_metrics(queries, items, targets, exclude, (5, 10)))
  assert got["mrr"] == pytest.approx((1 / 29 + 1 / 8 + 1 / 17) / 3)


@pytest.mark.parametrize("mode", ["plain", "blocked", "small_top_k_steps"], indirect=True)
def test_nan_scores_rank_as_excluded(mode):
  # A diverged model's NaN embeddings must not break the top-k: they rank as excluded items.
  queries, items, targets, exclude = random_case(seed=6)
  items[[4, 17]] = np.nan
  queries[3] = np.nan   # every score of this user is NaN: nothing left to rank
  excluded = [e + [4, 17] for e in exclude]
  indices, scores = topk.top_k_items(queries, items, 10, ItemSets.from_lists(exclude))
  want = reference_top_k(queries, items, 10, excluded)[0]
  np.testing.assert_array_equal(np.delete(indices, 3, 0), np.delete(want, 3, 0))
  assert (indices[3] == -1).all() and not np.isnan(scores).any()
  ok = [u for u in range(len(queries)) if u != 3]
  targets = [[t for t in targets[u] if t not in (4, 17)] for u in ok]
  got = evaluate.retrieval_metrics(queries[ok], items, ItemSets.from_lists(targets),
                                   ItemSets.from_lists([exclude[u] for u in ok]), ks=(5, 10))
  want = reference_metrics(queries[ok], items, targets, [excluded[u] for u in ok], (5, 10))
  assert_metrics_close(got, want)


def test_top_k_items_without_exclusions():
  queries, items, _, _ = random_case(seed=4)
  indices, _ = topk.top_k_items(queries, items, 10)
  np.testing.assert_array_equal(indices, reference_top_k(queries, items, 10, None)[0])


# -- most_popular_metrics ------------------------------------------------------------------


def test_most_popular_matches_reference(mode):
  _, _, targets, exclude = random_case(seed=5)
  rng = np.random.default_rng(5)
  counts = rng.integers(0, 6, 50) * 10_000_019   # ties, and counts beyond float32's integers
  ks = (1, 5, 10, 60)
  # Reference: rank by count, ties to the lower index (queries 1, items = counts, in float64).
  want = reference_metrics(np.ones((len(targets), 1)), counts[:, None].astype(np.float64),
                           targets, exclude, ks)
  got = evaluate.most_popular_metrics(counts, ItemSets.from_lists(targets),
                                      ItemSets.from_lists(exclude), ks=ks,
                                      users_per_chunk=7)
  assert_metrics_close(got, want)


def test_most_popular_ranks_exactly_as_scoring_its_order_would():
  # The baseline ranks without scoring (its order less each user's exclusions); it must give
  # the very figures of scoring every item by its count's dense rank through the model path,
  # slices and the full-corpus MRR of users with no target in the top K included.
  _, _, targets, exclude = random_case(seed=9, num_users=80, num_items=300)
  counts = np.random.default_rng(9).integers(0, 12, 300)   # many ties
  targets, exclude = ItemSets.from_lists(targets), ItemSets.from_lists(exclude)
  slices = evaluate.cold_slices(counts > 4)
  dense = np.unique(counts, return_inverse=True)[1].astype(np.float32)[:, None]
  for ks in ((1, 5, 20), (3, 400)):   # users missing the top 20 (MRR off the corpus); K > N
    want = evaluate.retrieval_metrics(np.ones((80, 1), np.float32), dense, targets, exclude,
                                      ks=ks, slices=slices)
    got = evaluate.most_popular_metrics(counts, targets, exclude, ks=ks, users_per_chunk=7,
                                        slices=slices)
    assert got == want
  assert 0 < got["mrr"] < got["hit_rate@400"] == 1.0
  assert want["hit_rate@3"] < 1.0 and want["cold"]["num_users"] > 0
