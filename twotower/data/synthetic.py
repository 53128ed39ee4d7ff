"""Synthetic interaction logs with planted, known structure.

Why: a retrieval trainer needs data whose right answer is known, to check that training
recovers planted preferences, to benchmark at scale (1M items, 20M events) without a
download, and to plant a feature cross that a ranking head can exploit.

Generative model (all under one seed):
  * K cluster centroids ``c_k``: random unit vectors in R^d.
  * Item ``i`` has a cluster ``k_i`` (uniform) and a price bucket ``b_i`` (a per-cluster
    Dirichlet mix), factor ``v_i = c_{k_i} + r_i`` with ``r_i ~ N(0, item_noise^2 / d)``.
    Within each (cluster, price bucket) group the items have power-law popularity in a
    random rank, scaled by a log-normal group weight: the prior ``p_i`` is Zipf-like over
    the catalogue (``p ∝ rank^-popularity_exponent``).
  * User ``u = c_a + w c_b + N(0, user_noise^2 / d)`` (a primary and a weaker secondary
    interest); ``segment = argmax_k u·c_k``; ``region`` is ``segment mod num_regions``,
    replaced by a random region with probability ``region_noise``.
  * Each event of user ``u`` picks item ``i`` with probability approximately

        P(i | u) ∝ p_i · exp(u·v_i / τ + λ [b_i == preferred_bucket(region_u)])

    (τ = ``affinity_temperature``, λ = ``nonlinear_weight``). The λ term is a pure cross
    of a user feature and an item feature: every bucket is preferred by as many regions as
    any other, so neither feature has a main effect. A ranking head that crosses region
    and price learns it directly; towers can only fold it into their embeddings.
  * Sampling is scalable and vectorised: cluster (exact per-user softmax), price bucket
    (exact), then the item within the group by sampling-importance-resampling: a few
    popularity draws, Gumbel-max over ``u·r_i / τ``. The first two steps replace the
    within-group average of ``exp(u·r_i / τ)`` by a group-independent constant, which is
    the "approximately" above. ``SyntheticData.scores`` gives the exact right-hand side.
  * Labels are 1-5 ratings from the standardised affinity plus noise. Timestamps spread
    each user's events over a random active period; a few share a second.

Output is grouped by user, time-ordered within user; ids are "u<k>" / "i<k>" where k is
the row in the ground-truth arrays. Generation is deterministic given the config (the
thread count does not change the result) and runs in chunks on a thread pool.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from typing import Optional

import numpy as np

from twotower.data import types


@dataclasses.dataclass
class SyntheticConfig:
  """Sizes and knobs of the generator; the defaults make a small, quick dataset."""
  num_users: int = 5000
  num_items: int = 2000
  num_interactions: int = 100_000
  latent_dim: int = 16
  num_clusters: int = 20
  popularity_exponent: float = 1.0      # item prior p ∝ rank^-exponent (0: uniform)
  affinity_temperature: float = 0.25    # τ: smaller means more peaked preferences
  nonlinear_weight: float = 0.0         # λ of the region × price-bucket cross
  seed: int = 0
  start_time: int = 1_600_000_000
  time_span: int = 365 * 86400          # seconds covered by the log
  user_activity_exponent: float = 0.5   # events per user: 3 + Zipf(exponent) share
  min_user_interactions: int = 3
  user_noise: float = 0.5
  secondary_interest: float = 0.6       # max weight of a user's second cluster
  item_noise: float = 0.5
  group_weight_sigma: float = 0.5       # log-normal spread of group popularity
  price_concentration: float = 2.0      # Dirichlet concentration of price mix per cluster
  num_price_buckets: int = 5
  num_regions: int = 8
  region_noise: float = 0.3
  category_noise: float = 0.1           # share of items whose category is not their cluster
  tags_per_cluster: int = 8
  tag_noise: float = 0.15               # share of tags drawn from all clusters' tags
  label_noise: float = 0.5
  tie_probability: float = 0.03         # share of events in the same second as the previous
  candidates: int = 8                   # importance-resampling draws per event
  resample_rounds: int = 3              # rounds that redraw repeated (user, item) pairs
  chunk_size: int = 131_072             # events per work unit (part of the seeding)
  num_threads: int = 0                  # 0: the CPUs available, at most 8

  def validate(self) -> None:
    positive = ("num_users", "num_items", "latent_dim", "num_clusters", "num_price_buckets",
                "num_regions", "tags_per_cluster", "candidates", "chunk_size")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.min_user_interactions < 1:
      raise ValueError("SyntheticConfig.min_user_interactions must be >= 1")
    if self.num_interactions < self.min_user_interactions * self.num_users:
      raise ValueError(
          f"num_interactions={self.num_interactions} is too few: every one of the "
          f"{self.num_users} users needs {self.min_user_interactions}")
    if self.affinity_temperature <= 0:
      raise ValueError("SyntheticConfig.affinity_temperature must be > 0")
    if self.popularity_exponent < 0 or self.user_activity_exponent < 0:
      raise ValueError("popularity and activity exponents must be >= 0")
    for name in ("region_noise", "category_noise", "tag_noise", "tie_probability"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"SyntheticConfig.{name} must be in [0, 1]")
    if self.time_span < 1:
      raise ValueError("SyntheticConfig.time_span must be >= 1 second")


@dataclasses.dataclass
class SyntheticData:
  """The generated dataset plus the ground truth it was drawn from.

  Row k of every user (item) array describes user "u<k>" (item "i<k>").
  """
  dataset: types.RawDataset
  user_factors: np.ndarray          # float32 [num_users, d]
  item_factors: np.ndarray          # float32 [num_items, d]
  item_cluster: np.ndarray          # int32 [num_items]
  item_popularity: np.ndarray       # float64 [num_items], the prior p_i, sums to 1
  user_segment: np.ndarray          # int32 [num_users], argmax_k u·c_k
  user_region: np.ndarray           # int32 [num_users]
  item_price_bucket: np.ndarray     # int32 [num_items]
  preferred_bucket: np.ndarray      # int32 [num_regions], the cross of the λ term
  cluster_centroids: np.ndarray     # float32 [num_clusters, d]
  config: SyntheticConfig

  def scores(self, users: np.ndarray, items: Optional[np.ndarray] = None) -> np.ndarray:
    """Ground-truth log-propensities [len(users), len(items)], up to a per-user constant.

    ``log p_i + u·v_i / τ + λ [b_i == preferred_bucket(region_u)]``: ranking by it is the
    oracle that a learned model is compared with.
    """
    users = np.asarray(users, np.int64)
    items = np.arange(len(self.item_factors)) if items is None else np.asarray(items)
    cfg = self.config
    s = (self.user_factors[users] @ self.item_factors[items].T) / cfg.affinity_temperature
    s += np.log(self.item_popularity[items]).astype(np.float32)
    if cfg.nonlinear_weight:
      pref = self.preferred_bucket[self.user_region[users]]
      s += cfg.nonlinear_weight * (pref[:, None] == self.item_price_bucket[items][None, :])
    return s


def _names(prefix: str, n: int) -> np.ndarray:
  """Fixed-width str array ["<prefix>0", ...]; narrow, so string ufuncs on it are quick."""
  width = len(prefix) + len(str(max(n - 1, 0)))
  return np.strings.add(prefix, np.arange(n).astype(f"<U{width}")).astype(f"<U{width}")


def ids(prefix: str, n: int) -> np.ndarray:
  """Object array ["<prefix>0", ..., "<prefix>{n-1}"], built once and then indexed."""
  return _names(prefix, n).astype(object)


# Gumbel noise at 2^16 quantiles: a table look-up is several times cheaper than
# -log(-log(U)), and the quantisation does not matter for picking among a few candidates.
_GUMBEL = (-np.log(-np.log((np.arange(1 << 16) + 0.5) / (1 << 16)))).astype(np.float32)


def _rng(seed: int, *key: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _powerlaw_mass(n: np.ndarray, a: float) -> np.ndarray:
  """∫_1^{n+1} x^-a dx: the mass of ranks [0, n) under the continuous power law."""
  n = np.asarray(n, np.float64)
  if abs(1.0 - a) < 1e-9:
    return np.log1p(n)
  return ((n + 1.0) ** (1.0 - a) - 1.0) / (1.0 - a)


@dataclasses.dataclass
class _World:
  """Everything the per-chunk samplers read (shared, read-only)."""
  centroids: np.ndarray         # [K, d] float32
  user_factors: np.ndarray      # [U, d] float32
  item_factors: np.ndarray      # [N, d] float32
  item_residual: np.ndarray     # [N, d] float32, v_i - c_{k_i}, in slot order
  slot_item: np.ndarray         # [N] int64: item at each slot (slots sorted by group)
  group_offset: np.ndarray      # [G] int64: first slot of group g = k * B + b
  group_size: np.ndarray        # [G] int64
  group_log_mass: np.ndarray    # [K, B] float64 (-inf for empty groups)
  group_curve: np.ndarray       # [G] float32: (n+1)^(1-a) - 1, or log(n+1) when a == 1
  user_region: np.ndarray       # [U] int32
  preferred_bucket: np.ndarray  # [R] int32
  user_start: np.ndarray        # [U + 1] int64: first event of each user


def _build_world(cfg: SyntheticConfig):
  """Factors, catalogue, popularity and side features: everything but the events."""
  rng = _rng(cfg.seed, 0)
  K, d, N, U, B = (cfg.num_clusters, cfg.latent_dim, cfg.num_items, cfg.num_users,
                   cfg.num_price_buckets)
  a = cfg.popularity_exponent
  centroids = rng.standard_normal((K, d))
  centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

  # Items: cluster, price bucket (per-cluster mix), residual factor.
  item_cluster = rng.integers(0, K, N)
  price_mix = rng.dirichlet(np.full(B, cfg.price_concentration), K)
  cum_mix = np.cumsum(price_mix, axis=1)
  cum_mix[:, -1] = 1.0
  item_bucket = (rng.random(N)[:, None] >= cum_mix[item_cluster]).sum(axis=1)
  item_bucket = np.minimum(item_bucket, B - 1)
  residual = rng.standard_normal((N, d)) * (cfg.item_noise / math.sqrt(d))
  item_factors = (centroids[item_cluster] + residual).astype(np.float32)

  # Slots: items sorted by group, in random order inside a group; rank in group = popularity rank.
  group = item_cluster * B + item_bucket
  slot_item = np.lexsort((rng.permutation(N), group))
  group_size = np.bincount(group, minlength=K * B).astype(np.int64)
  group_offset = np.concatenate([[0], np.cumsum(group_size)[:-1]]).astype(np.int64)
  local_rank = np.empty(N, np.int64)
  local_rank[slot_item] = np.arange(N) - np.repeat(group_offset, group_size)
  group_weight = np.exp(cfg.group_weight_sigma * rng.standard_normal(K * B))
  # Item mass: ∫_{j+1}^{j+2} x^-a dx times its group's weight; a group's mass is the sum.
  item_mass = group_weight[group] * (_powerlaw_mass(local_rank + 1, a)
                                     - _powerlaw_mass(local_rank, a))
  total = item_mass.sum()
  item_popularity = item_mass / total
  group_mass = group_weight * _powerlaw_mass(group_size, a) / total
  with np.errstate(divide="ignore"):
    group_log_mass = np.log(group_mass).reshape(K, B)
  if abs(1.0 - a) < 1e-9:
    group_curve = np.log1p(group_size.astype(np.float64))
  else:
    group_curve = (group_size + 1.0) ** (1.0 - a) - 1.0
  group_curve = group_curve.astype(np.float32)

  # Users: primary + weaker secondary interest + noise.
  primary = rng.integers(0, K, U)
  secondary = rng.integers(0, K, U)
  weight = rng.random(U) * cfg.secondary_interest
  user_factors = (centroids[primary] + weight[:, None] * centroids[secondary]
                  + rng.standard_normal((U, d)) * (cfg.user_noise / math.sqrt(d)))
  user_factors = user_factors.astype(np.float32)
  centroids = centroids.astype(np.float32)
  user_segment = np.argmax(user_factors @ centroids.T, axis=1).astype(np.int32)
  R = cfg.num_regions
  user_region = np.where(rng.random(U) < cfg.region_noise, rng.integers(0, R, U),
                         user_segment % R).astype(np.int32)
  # Balanced: each bucket is the favourite of floor or ceil(R / B) regions.
  preferred_bucket = rng.permutation(np.arange(R) % B).astype(np.int32)

  # Events per user: the minimum plus a Zipf share (random rank) of the rest.
  extra = cfg.num_interactions - cfg.min_user_interactions * U
  share = rng.permutation(np.arange(1, U + 1, dtype=np.float64) ** -cfg.user_activity_exponent)
  counts = cfg.min_user_interactions + rng.multinomial(extra, share / share.sum())
  user_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  world = _World(
      centroids=centroids, user_factors=user_factors, item_factors=item_factors,
      item_residual=residual[slot_item].astype(np.float32), slot_item=slot_item,
      group_offset=group_offset, group_size=group_size, group_log_mass=group_log_mass,
      group_curve=group_curve, user_region=user_region, preferred_bucket=preferred_bucket,
      user_start=user_start)
  truth = dict(user_factors=user_factors, item_factors=item_factors,
               item_cluster=item_cluster.astype(np.int32), item_popularity=item_popularity,
               user_segment=user_segment, user_region=user_region,
               item_price_bucket=item_bucket.astype(np.int32),
               preferred_bucket=preferred_bucket, cluster_centroids=centroids)
  return world, truth


def _pick_in_group(world: _World, cfg: SyntheticConfig, rng: np.random.Generator,
                   user: np.ndarray, group: np.ndarray) -> np.ndarray:
  """Items drawn within their groups: popularity proposals, Gumbel-max over u·r / τ."""
  m, a = cfg.candidates, cfg.popularity_exponent
  out = np.empty(len(user), np.int64)
  block = 32_768
  for lo in range(0, len(user), block):
    g = group[lo:lo + block]
    n = len(g)
    r = rng.random((n, m), dtype=np.float32)
    curve = world.group_curve[g][:, None]
    # Inverse CDF of the continuous power law on [1, size + 1).
    if abs(1.0 - a) < 1e-9:
      x = np.exp(r * curve)
    else:
      x = np.exp(np.log1p(r * curve) * (1.0 / (1.0 - a)))
    rank = np.minimum(x.astype(np.int64), world.group_size[g][:, None])
    slot = (world.group_offset[g] - 1)[:, None] + np.maximum(rank, 1)
    u = np.take(world.user_factors, user[lo:lo + block], axis=0)
    logit = np.einsum("nmd,nd->nm", np.take(world.item_residual, slot, axis=0), u)
    logit *= np.float32(1.0 / cfg.affinity_temperature)
    logit += np.take(_GUMBEL, rng.integers(0, len(_GUMBEL), (n, m), dtype=np.uint16))
    best = np.argmax(logit, axis=1)
    out[lo:lo + n] = world.slot_item[np.take_along_axis(slot, best[:, None], 1)[:, 0]]
  return out


def _sample_chunk(world: _World, cfg: SyntheticConfig, chunk: int, u_lo: int, u_hi: int,
                  item_out: np.ndarray, time_out: np.ndarray, affinity_out: np.ndarray):
  """Events of users [u_lo, u_hi): items, timestamps and affinities, written in place."""
  rng = _rng(cfg.seed, 1, chunk)
  e_lo, e_hi = int(world.user_start[u_lo]), int(world.user_start[u_hi])
  counts = np.diff(world.user_start[u_lo:u_hi + 1])
  n_users, n = u_hi - u_lo, e_hi - e_lo
  local_user = np.repeat(np.arange(n_users), counts)
  user = local_user + u_lo
  uf = world.user_factors[u_lo:u_hi]
  K, B = cfg.num_clusters, cfg.num_price_buckets
  lam = cfg.nonlinear_weight

  # Cluster: exact softmax of log(group mass, with the cross) + u·c / τ, per user.
  pref = world.preferred_bucket[world.user_region[u_lo:u_hi]]
  mass = np.exp(world.group_log_mass)                                     # [K, B]
  cum_mass = np.cumsum(mass, axis=1)
  cluster_mass = mass.sum(axis=1)[None, :] + (math.exp(lam) - 1.0) * mass[:, pref].T
  with np.errstate(divide="ignore"):
    logit = np.log(cluster_mass) + (uf @ world.centroids.T) / cfg.affinity_temperature
  logit -= logit.max(axis=1, keepdims=True)
  cdf = np.cumsum(np.exp(logit), axis=1)
  cdf /= cdf[:, -1:]
  cdf[:, -1] = 1.0
  cdf += np.arange(n_users)[:, None]
  pos = np.searchsorted(cdf.ravel(), local_user + rng.random(n), side="right")
  cluster = np.minimum(pos - local_user * K, K - 1)

  # Price bucket given the cluster: exact, B choices (the preferred one boosted by e^λ).
  cum = np.take(cum_mass, cluster, axis=0)                                # [n, B]
  if lam:
    p = pref[local_user]
    boost = (math.exp(lam) - 1.0) * mass[cluster, p]
    cum += boost[:, None] * (np.arange(B)[None, :] >= p[:, None])
  bucket = (rng.random(n)[:, None] * cum[:, -1:] >= cum).sum(axis=1)
  bucket = np.minimum(bucket, B - 1)
  group = cluster * B + bucket

  item = _pick_in_group(world, cfg, rng, user, group)

  # Redraw repeated (user, item) pairs a few times; heavy users in small groups keep some.
  key = local_user.astype(np.int64) * cfg.num_items + item
  order = np.argsort(key, kind="stable")
  sk = key[order]
  dup = order[1:][sk[1:] == sk[:-1]]
  seen = sk
  for _ in range(cfg.resample_rounds):
    if not len(dup):
      break
    item[dup] = _pick_in_group(world, cfg, rng, user[dup], group[dup])
    new = key[dup] = local_user[dup].astype(np.int64) * cfg.num_items + item[dup]
    hit = seen[np.minimum(np.searchsorted(seen, new), len(seen) - 1)] == new
    _, first = np.unique(new, return_index=True)
    repeat = np.ones(len(new), bool)
    repeat[first] = False
    bad = hit | repeat
    seen = np.sort(np.concatenate([seen, new[~bad]]))
    dup = dup[bad]

  # Timestamps: exponential gaps (some zero) rescaled to the user's active period.
  span = np.maximum(1, (cfg.time_span * (0.05 + 0.95 * rng.random(n_users)))).astype(np.int64)
  t0 = cfg.start_time + (rng.random(n_users) * (cfg.time_span - span + 1)).astype(np.int64)
  gap = rng.standard_exponential(n)
  gap[rng.random(n) < cfg.tie_probability] = 0.0
  first = world.user_start[u_lo:u_hi] - e_lo
  gap[first] = 0.0
  cs = np.cumsum(gap)
  local = cs - np.repeat(cs[first], counts)
  total = np.repeat(local[first + counts - 1], counts)
  frac = np.where(total > 0, local / np.where(total > 0, total, 1.0), 0.0)
  time_out[e_lo:e_hi] = np.repeat(t0, counts) + np.minimum(
      (frac * np.repeat(span, counts)).astype(np.int64), np.repeat(span - 1, counts))

  aff = np.einsum("nd,nd->n", np.take(world.user_factors, user, axis=0),
                  np.take(world.item_factors, item, axis=0))
  aff /= cfg.affinity_temperature
  if lam:
    price = group % B
    aff += lam * (price == pref[local_user])
  item_out[e_lo:e_hi] = item
  affinity_out[e_lo:e_hi] = aff


def _chunks(user_start: np.ndarray, chunk_size: int) -> list[tuple[int, int]]:
  """Contiguous user ranges of about chunk_size events each (a user is never split)."""
  total = int(user_start[-1])
  cuts = np.searchsorted(user_start, np.arange(chunk_size, total, chunk_size), side="left")
  bounds = np.unique(np.concatenate([[0], cuts, [len(user_start) - 1]]))
  return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _num_threads(cfg: SyntheticConfig) -> int:
  if cfg.num_threads > 0:
    return cfg.num_threads
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def _side_tables(cfg: SyntheticConfig, truth: dict) -> tuple[types.Table, types.Table]:
  """User table (segment, region) and item table (category, tags, price_bucket)."""
  rng = _rng(cfg.seed, 2)
  U, N, K, T = cfg.num_users, cfg.num_items, cfg.num_clusters, cfg.tags_per_cluster
  cluster = truth["item_cluster"]
  category = np.where(rng.random(N) < cfg.category_noise, rng.integers(0, K, N), cluster)
  # 2-4 distinct tags from the cluster's own T tags; a few drawn from all K * T tags.
  width = min(4, T)
  own = np.argsort(rng.random((N, T)), axis=1)[:, :width]
  tag = cluster[:, None].astype(np.int64) * T + own
  noisy = rng.random((N, width)) < cfg.tag_noise
  tag = np.where(noisy, rng.integers(0, K * T, (N, width)), tag)
  num_tags = rng.integers(min(2, width), width + 1, N)
  names = _names("t", K * T)
  tags = names[tag[:, 0]]
  for j in range(1, width):
    tags = np.where(num_tags > j, np.strings.add(np.strings.add(tags, " "), names[tag[:, j]]),
                    tags)

  def table(columns):
    n = len(next(iter(columns.values())))
    kinds = {name: types.TOKEN for name in columns}
    if "tags" in columns:
      kinds["tags"] = types.TOKEN_SEQ
    return types.Table(path="<synthetic>", columns=columns, kinds=kinds,
                       line_numbers=np.arange(n, dtype=np.int64) + 2)

  users = table({"user_id": ids("u", U),
                 "segment": ids("s", K)[truth["user_segment"]],
                 "region": ids("r", cfg.num_regions)[truth["user_region"]]})
  items = table({"item_id": ids("i", N),
                 "category": ids("c", K)[category],
                 "tags": tags.astype(object),
                 "price_bucket": ids("p", cfg.num_price_buckets)[truth["item_price_bucket"]]})
  return users, items


def generate(config: Optional[SyntheticConfig] = None) -> SyntheticData:
  """Draws a dataset with known user / item factors from ``config``."""
  cfg = config or SyntheticConfig()
  cfg.validate()
  world, truth = _build_world(cfg)
  n = cfg.num_interactions
  item = np.empty(n, np.int64)
  timestamp = np.empty(n, np.int64)
  affinity = np.empty(n, np.float32)
  chunks = _chunks(world.user_start, cfg.chunk_size)
  threads = min(_num_threads(cfg), len(chunks))
  jobs = [(world, cfg, c, lo, hi, item, timestamp, affinity)
          for c, (lo, hi) in enumerate(chunks)]
  if threads <= 1:
    for job in jobs:
      _sample_chunk(*job)
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for f in [pool.submit(_sample_chunk, *job) for job in jobs]:
        f.result()

  # Ratings: standardised affinity plus noise, rounded into 1..5.
  rng = _rng(cfg.seed, 3)
  z = (affinity - affinity.mean()) / max(float(affinity.std()), 1e-6)
  z += cfg.label_noise * rng.standard_normal(n, dtype=np.float32)
  label = np.clip(np.rint(3.0 + 1.2 * z), 1, 5).astype(np.float32)

  user = np.repeat(np.arange(cfg.num_users), np.diff(world.user_start))
  interactions = types.Interactions(
      path="<synthetic>", user_id=ids("u", cfg.num_users)[user],
      item_id=ids("i", cfg.num_items)[item], timestamp=timestamp, label=label,
      line_numbers=np.arange(n, dtype=np.int64) + 2)
  user_table, item_table = _side_tables(cfg, truth)
  dataset = types.RawDataset("synthetic", interactions, user_table, item_table)
  return SyntheticData(dataset=dataset, config=cfg, **truth)
