"""Synthetic interaction logs with planted, known structure.

Why: a retrieval trainer needs data whose right answer is known, to check that training
recovers planted preferences, to benchmark at scale (1M items, 20M events) without a
download, and to plant a feature cross that a ranking head can exploit.

Generative model (all under one seed):
  * K cluster centroids ``c_k``: random unit vectors in R^d.
  * Item ``i`` has a cluster ``k_i`` (uniform) and a price bucket ``b_i`` (a per-cluster
    Dirichlet mix); its factor is ``v_i = c_{k_i} + r_i``, where the residual varies along
    ``residual_rank`` random directions of its cluster (sub-genres), ``E|r_i|^2 =
    item_noise^2``.
  * Popularity prior ``p_i``: each (cluster, price bucket) group gets a Zipf weight (random
    group order, log-normal jitter) and its items a power law in a random rank within the
    group; the products are Zipf-like over the catalogue, ``p ∝ rank^-popularity_exponent``.
  * User ``u = c_a + w c_b + noise`` (a primary and a weaker secondary interest);
    ``segment = argmax_k u·c_k``; ``region = segment mod num_regions``, replaced by a
    random region with probability ``region_noise``. Events per user: at least
    ``min_user_interactions`` plus a Zipf share, at most ``max_user_fraction`` of the items.
  * An event of user ``u`` picks a group ``g = (k, b)`` with probability ∝
    ``m_g exp(u·c_k / τ + λ [b == preferred_bucket(region_u)])`` (``m_g``: the group's
    prior mass; exact per-user softmax), then an item of the group with probability ∝
    ``p_i exp(u·r_i / τ)`` (importance resampling: ``candidates`` draws from the prior,
    Gumbel-max). So ``P(i | u) ≈ p_i exp(u·v_i / τ + λ [...]) / Z_g(u)``, where ``Z_g(u)``,
    the prior-weighted mean of ``exp(u·r / τ)`` over the group, hardly varies unless τ is
    small; ``SyntheticData.log_probs`` gives it exactly: the oracle for evaluation.
  * The λ term (``nonlinear_weight``) is a pure cross of a user feature and an item
    feature: every bucket is some region's favourite, as many regions' as any other, so
    neither feature has a main effect. A ranking head crossing region and price learns it
    directly; towers must fold it into their embeddings.
  * Repeated (user, item) pairs are redrawn a few times, so a log looks like ratings
    (heavy users in small catalogues keep a few repeats); this slightly flattens the
    distribution of heavy users relative to ``log_probs``.
  * Labels are 1-5 ratings from the standardised affinity plus noise. Timestamps spread
    each user's events over a random active period; a few share a second.
  * Titles (``title_tokens`` > 0): each topic (cluster) has its own words, Zipf-like,
    and shares some with its nearest topic; an item's title mixes its cluster's words,
    some of its second topic's (the other centroid nearest its factor) and function words
    common to all topics. The words alone name the item's cluster for most items, not all
    (``title_topic_counts``: ~78% / 86% / 92% of items at 8 / 16 / 32 words); they are
    drawn from their own stream, so the rest of the data is the same with or without them.
  * Cold items (``cold_items``, a share): they stay in the catalogue and in the sampler's
    distribution, but an event that the per-user temporal split (``split_*``: the one
    ``prepare`` will run) puts in training never picks one, so a cold item's events are
    all validation or test targets, late in their users' timelines. Event counts per user
    and timestamps' law do not change; ``log_probs`` stays the oracle of held-out events.

Output is grouped by user, time-ordered within user; ids are "u<k>" / "i<k>" where k is
the row in the ground-truth arrays. Generation is vectorised, runs in chunks on a thread
pool and is deterministic given the config (the thread count does not change the result).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Optional

import numpy as np

from twotower import cpus
from twotower.data import splits, types


@dataclasses.dataclass
class SyntheticConfig:
  """Sizes and knobs of the generator; the defaults make a small, quick dataset."""
  num_users: int = 5000
  num_items: int = 2000
  num_interactions: int = 100_000
  latent_dim: int = 16
  num_clusters: int = 20
  popularity_exponent: float = 1.0      # item prior p ∝ rank^-exponent (0: uniform)
  affinity_temperature: float = 0.2     # τ: smaller means more peaked preferences
  nonlinear_weight: float = 0.0         # λ of the region × price-bucket cross
  seed: int = 0
  start_time: int = 1_600_000_000
  time_span: int = 365 * 86400          # seconds covered by the log
  user_activity_exponent: float = 0.5   # events per user: 3 + Zipf(exponent) share
  min_user_interactions: int = 3
  max_user_fraction: float = 0.5        # cap on a user's events, as a share of the items
  user_noise: float = 0.5
  secondary_interest: float = 0.6       # max weight of a user's second cluster
  item_noise: float = 0.5
  residual_rank: int = 4                # directions along which a cluster's items vary
  group_weight_sigma: float = 0.3       # log-normal jitter of group popularity
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
  resample_rounds: int = 8              # rounds that redraw repeated (user, item) pairs
  chunk_size: int = 131_072             # events per work unit (part of the seeding)
  num_threads: int = 0                  # 0: the CPUs available, at most 8
  title_tokens: int = 0                 # words per item title; 0: no title column
  title_topic_words: int = 300          # words of each topic's vocabulary (Zipf within it)
  title_word_exponent: float = 1.0      # Zipf exponent of a topic's (and the pool's) words
  title_neighbour_share: float = 0.2    # share of a topic's words from its nearest topic's
  title_noise: float = 0.4              # share of title words from the common function words
  title_mix: float = 0.4                # max weight of an item's second topic in its title
  cold_items: float = 0.0               # share of items with no training events ("new")
  split_valid_fraction: float = 0.1     # the per-user split cold items are placed for
  split_test_fraction: float = 0.1
  split_min_user_interactions: int = 3

  def validate(self) -> None:
    positive = ("num_users", "num_items", "latent_dim", "num_clusters", "num_price_buckets",
                "residual_rank", "num_regions", "tags_per_cluster", "candidates",
                "chunk_size")
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
    if not 0.0 < self.max_user_fraction:
      raise ValueError("SyntheticConfig.max_user_fraction must be > 0")
    if self.time_span < 1:
      raise ValueError("SyntheticConfig.time_span must be >= 1 second")
    if self.title_tokens < 0 or self.title_topic_words < 1 or self.title_word_exponent < 0:
      raise ValueError("SyntheticConfig: title_tokens must be >= 0, title_topic_words >= 1 "
                       "and title_word_exponent >= 0")
    for name in ("title_neighbour_share", "title_noise", "title_mix"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"SyntheticConfig.{name} must be in [0, 1]")
    if not 0.0 <= self.cold_items < 1.0:
      raise ValueError(f"SyntheticConfig.cold_items must be in [0, 1), got {self.cold_items}")


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
  item_cold: np.ndarray             # bool [num_items]: no training events (cold_items)
  config: SyntheticConfig

  def log_probs(self, users: np.ndarray) -> np.ndarray:
    """log P(item | user) of the sampler, [len(users), num_items] float32: the oracle.

    Memory is a few float32 [len(users), num_items] arrays: call it on batches of users.

    The process picks a (cluster, price) group g with probability ∝
    m_g exp(u·c_k / τ + λ [b == preferred_bucket(region_u)]) (m_g: the group's prior
    mass), then an item of g with probability ∝ p_i exp(u·r_i / τ). This is exact up to
    the importance resampling of the second step. Up to a per-user constant it equals
    ``log p_i + u·v_i / τ + λ [...] - log Z_g(u)`` with ``Z_g(u)`` the prior-weighted mean
    of ``exp(u·r / τ)`` over the group: close to the plain formula when τ is not small.
    """
    cfg = self.config
    users = np.asarray(users, np.int64)
    u = self.user_factors[users]
    centroid = self.cluster_centroids[self.item_cluster]
    tau = cfg.affinity_temperature
    within = (u @ (self.item_factors - centroid).T) / tau               # u·r_i / τ
    group = self.item_cluster.astype(np.int64) * cfg.num_price_buckets + self.item_price_bucket
    num_groups = cfg.num_clusters * cfg.num_price_buckets
    # log(m_g Z_g(u)) = log sum_{i in g} p_i exp(u·r_i / τ): a stable log-sum-exp.
    a = within + np.log(self.item_popularity)[None, :].astype(np.float32)
    shift = a.max(axis=1, keepdims=True)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[sizes > 0]
    sums = np.add.reduceat(np.exp(a - shift)[:, order], starts, axis=1)
    log_mass_z = np.zeros((len(users), num_groups), np.float32)        # empty: unused
    log_mass_z[:, sizes > 0] = np.log(sums) + shift                     # log(m_g Z_g(u))
    # log P(g | u): the softmax of the first step.
    mass = np.bincount(group, weights=self.item_popularity, minlength=num_groups)
    with np.errstate(divide="ignore"):
      log_mass = np.log(mass)
    k = np.arange(num_groups) // cfg.num_price_buckets
    b = np.arange(num_groups) % cfg.num_price_buckets
    g_logit = (u @ self.cluster_centroids[k].T) / tau + log_mass[None, :]
    if cfg.nonlinear_weight:
      pref = self.preferred_bucket[self.user_region[users]]
      g_logit = g_logit + cfg.nonlinear_weight * (b[None, :] == pref[:, None])
    g_max = g_logit.max(axis=1, keepdims=True)
    log_pg = g_logit - (g_max + np.log(np.exp(g_logit - g_max).sum(axis=1, keepdims=True)))
    # log P(i | u) = log P(g | u) + log p_i + u·r_i / τ - log(m_g Z_g(u)).
    return (a + (log_pg - log_mass_z)[:, group]).astype(np.float32)


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


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a @ b, small ones without BLAS: OpenBLAS threads spin after each call and steal the
  cores that the sampling threads need, which costs more than a small product."""
  if a.shape[0] * a.shape[1] * b.shape[1] > 20_000_000:
    return a @ b
  return np.einsum("ij,jk->ik", a, b, optimize=False)


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
  cluster_basis: np.ndarray     # [K, d, q] float32: W_k scaled by item_noise / (sqrt(q) τ)
  item_code: np.ndarray         # [q, N] float32: z_i, in slot order
  slot_item: np.ndarray         # [N] int64: item at each slot (slots sorted by group)
  group_offset: np.ndarray      # [G] int64: first slot of group g = k * B + b
  group_size: np.ndarray        # [G] int64
  group_log_mass: np.ndarray    # [K, B] float64 (-inf for empty groups)
  group_curve: np.ndarray       # [G] float32: (n+1)^(1-a) - 1, or log(n+1) when a == 1
  user_region: np.ndarray       # [U] int32
  preferred_bucket: np.ndarray  # [R] int32
  user_start: np.ndarray        # [U + 1] int64: first event of each user
  item_cold: Optional[np.ndarray]  # [N] bool: cold items; None when there are none
  slot_cold: Optional[np.ndarray]  # [N] bool: the same in slot order


def _build_world(cfg: SyntheticConfig):
  """Factors, catalogue, popularity and side features: everything but the events."""
  rng = _rng(cfg.seed, 0)
  K, d, N, U, B = (cfg.num_clusters, cfg.latent_dim, cfg.num_items, cfg.num_users,
                   cfg.num_price_buckets)
  a = cfg.popularity_exponent
  centroids = rng.standard_normal((K, d))
  centroids = (centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).astype(np.float32)

  # Items: cluster and price bucket (a per-cluster mix).
  item_cluster = rng.integers(0, K, N)
  price_mix = rng.dirichlet(np.full(B, cfg.price_concentration), K)
  cum_mix = np.cumsum(price_mix, axis=1)
  cum_mix[:, -1] = 1.0
  item_bucket = (rng.random(N)[:, None] >= cum_mix[item_cluster]).sum(axis=1)
  item_bucket = np.minimum(item_bucket, B - 1)
  # Slots: items sorted by group, in random order within it; slot order within a group is
  # popularity order.
  group = item_cluster * B + item_bucket
  slot_item = np.argsort(group.astype(np.int64) * N + rng.permutation(N))
  group_size = np.bincount(group, minlength=K * B).astype(np.int64)
  group_offset = np.concatenate([[0], np.cumsum(group_size)[:-1]]).astype(np.int64)
  local_rank = np.empty(N, np.int64)
  local_rank[slot_item] = np.arange(N) - np.repeat(group_offset, group_size)
  # Factors: v = c_k + W_k z with q unit directions W_k per cluster, E|W_k z|^2 = noise^2.
  # Codes z are drawn in slot order, where each cluster's items are contiguous.
  q = cfg.residual_rank
  basis = rng.standard_normal((K, d, q))
  basis /= np.linalg.norm(basis, axis=1, keepdims=True)
  basis = (basis * (cfg.item_noise / math.sqrt(q))).astype(np.float32)
  code = rng.standard_normal((N, q)).astype(np.float32)
  slot_factors = np.empty((N, d), np.float32)
  cluster_end = np.cumsum(group_size.reshape(K, B).sum(axis=1))
  for k in range(K):
    lo, hi = (cluster_end[k - 1] if k else 0), cluster_end[k]
    slot_factors[lo:hi] = _dot(code[lo:hi], basis[k].T) + centroids[k]
  item_factors = np.empty((N, d), np.float32)
  item_factors[slot_item] = slot_factors
  # Groups get Zipf weights in a random order, items a power law in their rank within the
  # group: the products (group rank * item rank)^-a, sorted, follow rank^-a closely.
  group_weight = ((rng.permutation(K * B) + 1.0) ** -a
                  * np.exp(cfg.group_weight_sigma * rng.standard_normal(K * B)))
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
  mix = rng.random(U) * cfg.secondary_interest
  user_factors = rng.standard_normal((U, d), dtype=np.float32)
  user_factors *= np.float32(cfg.user_noise / math.sqrt(d))
  user_factors += centroids[primary]
  user_factors += mix[:, None].astype(np.float32) * centroids[secondary]
  user_segment = np.argmax(_dot(user_factors, centroids.T), axis=1).astype(np.int32)
  R = cfg.num_regions
  user_region = np.where(rng.random(U) < cfg.region_noise, rng.integers(0, R, U),
                         user_segment % R).astype(np.int32)
  # Balanced: each bucket is the favourite of floor or ceil(R / B) regions.
  preferred_bucket = rng.permutation(np.arange(R) % B).astype(np.int32)

  # Events per user: the minimum plus a Zipf share (random rank) of the rest, at most
  # max_user_fraction of the catalogue (more could only repeat items); the excess goes
  # to the users below the cap.
  share = rng.permutation(np.arange(1, U + 1, dtype=np.float64) ** -cfg.user_activity_exponent)
  cap = max(int(cfg.max_user_fraction * N), -(-cfg.num_interactions // U))
  counts = np.full(U, cfg.min_user_interactions, np.int64)
  extra = cfg.num_interactions - counts.sum()
  while extra > 0:
    open_share = np.where(counts < cap, share, 0.0)
    counts += rng.multinomial(extra, open_share / open_share.sum())
    extra = int(np.maximum(counts - cap, 0).sum())
    counts = np.minimum(counts, cap)
  user_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  # Cold ("new") items: a uniform share, from their own stream so that the rest of the
  # world is the same with or without them.
  item_cold = np.zeros(N, bool)
  num_cold = int(round(cfg.cold_items * N))
  if num_cold:
    item_cold[_rng(cfg.seed, 5).choice(N, num_cold, replace=False)] = True

  world = _World(
      centroids=centroids, user_factors=user_factors, item_factors=item_factors,
      cluster_basis=(basis / cfg.affinity_temperature).astype(np.float32),
      item_code=np.ascontiguousarray(code.T), slot_item=slot_item,
      group_offset=group_offset, group_size=group_size, group_log_mass=group_log_mass,
      group_curve=group_curve, user_region=user_region, preferred_bucket=preferred_bucket,
      user_start=user_start,
      item_cold=item_cold if num_cold else None,
      slot_cold=item_cold[slot_item] if num_cold else None)
  truth = dict(item_cold=item_cold, user_factors=user_factors, item_factors=item_factors,
               item_cluster=item_cluster.astype(np.int32), item_popularity=item_popularity,
               user_segment=user_segment, user_region=user_region,
               item_price_bucket=item_bucket.astype(np.int32),
               preferred_bucket=preferred_bucket, cluster_centroids=centroids)
  return world, truth


def _pick_in_group(world: _World, cfg: SyntheticConfig, rng: np.random.Generator,
                   proj: np.ndarray, group: np.ndarray,
                   warm_only: Optional[np.ndarray] = None) -> np.ndarray:
  """Items drawn within their groups: popularity proposals, Gumbel-max over u·r / τ.

  ``proj[:, e]`` is the event's user factor projected on its cluster's basis, so a
  candidate's logit is ``proj[:, e] · z_i`` (q multiply-adds instead of d). Events where
  ``warm_only`` is set never pick a cold candidate unless all their candidates are cold.
  """
  m, a = cfg.candidates, cfg.popularity_exponent
  out = np.empty(len(group), np.int64)
  block = 32_768
  for lo in range(0, len(group), block):
    g = group[lo:lo + block]
    n = len(g)
    r = rng.random((n, m), dtype=np.float32)
    curve = world.group_curve[g][:, None]
    # Inverse CDF of the continuous power law on [1, size + 1).
    if abs(1.0 - a) < 1e-9:
      x = np.exp(r * curve)
    else:
      x = np.exp(np.log1p(r * curve) * np.float32(1.0 / (1.0 - a)))
    rank = np.minimum(x.astype(np.int64), world.group_size[g][:, None])
    slot = (world.group_offset[g] - 1)[:, None] + np.maximum(rank, 1)
    logit = np.take(world.item_code[0], slot)
    logit *= proj[0, lo:lo + n, None]
    for j in range(1, len(proj)):
      term = np.take(world.item_code[j], slot)
      term *= proj[j, lo:lo + n, None]
      logit += term
    logit += np.take(_GUMBEL, rng.integers(0, len(_GUMBEL), (n, m), dtype=np.uint16))
    if world.slot_cold is not None and warm_only is not None:
      logit[np.take(world.slot_cold, slot) & warm_only[lo:lo + n, None]] = -np.inf
    best = np.argmax(logit, axis=1)
    out[lo:lo + n] = world.slot_item[np.take_along_axis(slot, best[:, None], 1)[:, 0]]
  return out


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """keys found in sorted_keys (a vectorised set test on a sorted array)."""
  if not len(sorted_keys):
    return np.zeros(len(keys), bool)
  pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
  return sorted_keys[pos] == keys


def _projections(world: _World, uf: np.ndarray, local_user: np.ndarray,
                 cluster: np.ndarray) -> np.ndarray:
  """[q, n] user factor of each event on its cluster's (scaled) residual basis."""
  K, d, q = world.cluster_basis.shape
  if len(uf) * K <= 4 * len(cluster):
    # A [users, K * q] table, then a row gather per event.
    table = _dot(uf, world.cluster_basis.transpose(1, 0, 2).reshape(d, K * q)).reshape(-1, q)
    return np.ascontiguousarray(np.take(table, local_user * K + cluster, axis=0).T)
  out = np.empty((len(cluster), q), np.float32)
  for lo in range(0, len(cluster), 32_768):
    sl = slice(lo, lo + 32_768)
    out[sl] = np.einsum("nd,ndq->nq", np.take(uf, local_user[sl], axis=0),
                        np.take(world.cluster_basis, cluster[sl], axis=0))
  return np.ascontiguousarray(out.T)


def _move_off_cold(world: _World, warm_only: np.ndarray, item: np.ndarray,
                   group: np.ndarray) -> None:
  """Training events still on a cold item after the redraws (a heavy user's favourite
  group holds only cold items) take the next warm item in slot order: the same group
  when it has one, else a neighbouring group of the cluster. Rare; in place."""
  assert world.item_cold is not None and world.slot_cold is not None
  stuck = np.flatnonzero(warm_only & world.item_cold[item])
  if not len(stuck):
    return
  slot_of_item = np.empty(len(world.slot_item), np.int64)
  slot_of_item[world.slot_item] = np.arange(len(world.slot_item))
  warm_slots = np.flatnonzero(~world.slot_cold)
  slot = warm_slots[np.searchsorted(warm_slots, slot_of_item[item[stuck]]) % len(warm_slots)]
  item[stuck] = world.slot_item[slot]
  group[stuck] = np.searchsorted(world.group_offset, slot, side="right") - 1


def _sample_chunk(world: _World, cfg: SyntheticConfig, chunk: int, u_lo: int, u_hi: int,
                  item_out: np.ndarray, time_out: np.ndarray, affinity_out: np.ndarray):
  """Events of users [u_lo, u_hi): items, timestamps and affinities, written in place."""
  rng = _rng(cfg.seed, 1, chunk)
  e_lo, e_hi = int(world.user_start[u_lo]), int(world.user_start[u_hi])
  counts = np.diff(world.user_start[u_lo:u_hi + 1])
  n_users, n = u_hi - u_lo, e_hi - e_lo
  local_user = np.repeat(np.arange(n_users), counts)
  uf = world.user_factors[u_lo:u_hi]
  K, B = cfg.num_clusters, cfg.num_price_buckets
  lam = cfg.nonlinear_weight

  # Cluster: exact softmax of log(cluster mass, with the cross) + u·c / τ, per user.
  # Work is O(users x clusters): a handful of passes over one float32 matrix.
  pref = world.preferred_bucket[world.user_region[u_lo:u_hi]]
  mass = np.exp(world.group_log_mass)                                     # [K, B]
  cum_mass = np.cumsum(mass, axis=1)
  # log mass of each cluster for a user whose preferred bucket is b: [B, K].
  boosted = mass.sum(axis=1)[None, :] + (math.exp(lam) - 1.0) * mass.T
  with np.errstate(divide="ignore"):
    log_cluster_mass = np.log(boosted).astype(np.float32)
  logit = _dot(uf, world.centroids.T * np.float32(1.0 / cfg.affinity_temperature))
  logit += log_cluster_mass[pref] if lam else log_cluster_mass[0]
  logit -= logit.max(axis=1, keepdims=True)
  np.exp(logit, out=logit)
  cdf = np.cumsum(logit, axis=1, dtype=np.float64)
  del logit
  cdf /= cdf[:, -1:]
  cdf[:, -1] = 1.0
  cdf += np.arange(n_users)[:, None]
  cdf = cdf.ravel()

  def draw_groups(lu):
    """(cluster, group) for events of local users ``lu``."""
    pos = np.searchsorted(cdf, lu + rng.random(len(lu)), side="right")
    cluster = np.minimum(pos - lu * K, K - 1)
    # Price bucket given the cluster: exact, B choices (the preferred one boosted by e^λ).
    cum = np.take(cum_mass, cluster, axis=0)                              # [n, B]
    if lam:
      p = pref[lu]
      boost = (math.exp(lam) - 1.0) * mass[cluster, p]
      cum += boost[:, None] * (np.arange(B)[None, :] >= p[:, None])
    bucket = (rng.random(len(lu))[:, None] * cum[:, -1:] >= cum).sum(axis=1)
    return cluster, cluster * B + np.minimum(bucket, B - 1)

  # Events that the per-user split puts in training never pick a cold item: a cold item's
  # events are all held out (the split moves a boundary only earlier, at tied timestamps).
  warm_only = None
  if world.slot_cold is not None:
    warm_only = splits.temporal_split(
        local_user, np.arange(n), valid_fraction=cfg.split_valid_fraction,
        test_fraction=cfg.split_test_fraction,
        min_user_interactions=cfg.split_min_user_interactions) == splits.TRAIN
  cluster, group = draw_groups(local_user)
  proj = _projections(world, uf, local_user, cluster)
  item = _pick_in_group(world, cfg, rng, proj, group, warm_only)

  # Redraw repeated (user, item) pairs, and training events left on a cold item (all their
  # candidates were cold): first within their group, then (when the group is used up, as
  # for heavy users) from a fresh group. Hopeless cases keep their item.
  key = local_user.astype(np.int64) * cfg.num_items + item
  order = np.argsort(key, kind="stable")
  seen = key[order]
  dup = order[1:][seen[1:] == seen[:-1]]
  if warm_only is not None and world.item_cold is not None:
    dup = np.union1d(dup, np.flatnonzero(warm_only & world.item_cold[item]))
  accepted = np.zeros(0, np.int64)                      # sorted keys of redrawn events
  in_group_rounds = min(2, cfg.resample_rounds // 2)
  for round_ in range(cfg.resample_rounds):
    if not len(dup):
      break
    if round_ >= in_group_rounds:
      cluster[dup], group[dup] = draw_groups(local_user[dup])
      proj[:, dup] = _projections(world, uf, local_user[dup], cluster[dup])
    dup_warm_only = None if warm_only is None else warm_only[dup]
    item[dup] = _pick_in_group(world, cfg, rng, proj[:, dup], group[dup], dup_warm_only)
    new = key[dup] = local_user[dup].astype(np.int64) * cfg.num_items + item[dup]
    bad = _member(seen, new) | _member(accepted, new)
    if dup_warm_only is not None and world.item_cold is not None:
      bad |= dup_warm_only & world.item_cold[item[dup]]
    _, first = np.unique(new, return_index=True)
    repeat = np.ones(len(new), bool)
    repeat[first] = False
    bad |= repeat
    accepted = np.sort(np.concatenate([accepted, new[~bad]]))
    dup = dup[bad]

  if warm_only is not None and world.slot_cold is not None:
    _move_off_cold(world, warm_only, item, group)

  # Timestamps: exponential gaps (some zero) rescaled to the user's active period.
  span = np.maximum(1, cfg.time_span * (0.05 + 0.95 * rng.random(n_users))).astype(np.int64)
  t0 = cfg.start_time + (rng.random(n_users) * (cfg.time_span - span)).astype(np.int64)
  gap = rng.standard_exponential(n)
  gap[rng.random(n) < cfg.tie_probability] = 0.0
  first = world.user_start[u_lo:u_hi] - e_lo
  gap[first] = 0.0
  cs = np.cumsum(gap)
  cs -= np.repeat(cs[first], counts)                    # 0 at each user's first event
  total = cs[first + counts - 1]
  scale = np.where(total > 0, span / np.where(total > 0, total, 1.0), 0.0)
  cs *= np.repeat(scale, counts)
  time_out[e_lo:e_hi] = np.repeat(t0, counts) + cs.astype(np.int64)

  aff = np.einsum("nd,nd->n", np.take(world.user_factors, local_user + u_lo, axis=0),
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
  return max(1, min(cpus.available(), 8))


# The common pool of title noise words (shared by every topic), in Zipf order.
FUNCTION_WORDS = (
    "the", "of", "and", "a", "in", "to", "for", "with", "on", "at", "from", "by", "new",
    "my", "your", "all", "how", "what", "one", "about", "into", "after", "over", "best",
    "is", "you", "this", "we", "are", "more", "our", "day", "it", "not", "why", "can",
    "two", "just", "top", "good", "last", "first", "little", "big", "old", "life", "time",
    "back", "way", "world", "home", "out", "up", "vs", "no", "or", "an", "as", "be", "so")
_TITLE_ITEMS = 16_384   # items per title work unit (part of the seeding)


def title_words(cfg: SyntheticConfig) -> np.ndarray:
  """The title vocabulary: topic k's words are rows [k W, (k + 1) W) ("w<row>", W =
  ``title_topic_words``, Zipf order within the topic), then ``FUNCTION_WORDS``."""
  return np.concatenate([_names("w", cfg.num_clusters * cfg.title_topic_words),
                         np.array(FUNCTION_WORDS)])


def title_topic_counts(titles: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
  """[len(titles), K] int32: per title, how many of its words are each topic's (the
  function words count for none); its argmax is the title's nearest topic."""
  titles = np.asarray(titles, dtype=str)
  flat = np.array(" ".join(titles).split(), dtype=str)
  row = np.repeat(np.arange(len(titles)), np.strings.count(titles, " ") + 1)
  rest = np.strings.slice(flat, 1, None)
  is_topic = np.strings.startswith(flat, "w") & np.strings.isdigit(rest)
  index = rest[is_topic].astype(np.int64)
  counts = np.zeros((len(titles), cfg.num_clusters), np.int32)
  np.add.at(counts, (row[is_topic], index // cfg.title_topic_words), 1)
  return counts


def _zipf_table(n: int, exponent: float) -> np.ndarray:
  """Ranks [0, n) at 2^16 quantiles of a Zipf law: a draw is a uint16 table look-up
  (cheaper than a search; the rarest rank of a few hundred keeps its share to ~1e-5)."""
  cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -exponent)
  quantiles = (np.arange(1 << 16) + 0.5) / (1 << 16)
  return np.minimum(np.searchsorted(cdf / cdf[-1], quantiles), n - 1).astype(np.int32)


@dataclasses.dataclass
class _TitleModel:
  """What every unit of title items reads (shared, read-only)."""
  neighbour: np.ndarray       # [K] int64: each topic's nearest other topic
  topic_rank: np.ndarray      # [2^16] int32: Zipf ranks within a topic
  pool_rank: np.ndarray       # [2^16] int32: Zipf ranks within FUNCTION_WORDS
  word_bytes: np.ndarray      # [V, width + 1] uint8: zero-padded words, then a space


def _title_model(cfg: SyntheticConfig, centroids: np.ndarray) -> _TitleModel:
  near = centroids @ centroids.T
  np.fill_diagonal(near, -np.inf)
  vocab = title_words(cfg).astype(np.bytes_)
  width = vocab.dtype.itemsize
  word_bytes = np.full((len(vocab), width + 1), ord(" "), np.uint8)
  word_bytes[:, :width] = vocab.view(np.uint8).reshape(len(vocab), width)
  return _TitleModel(
      neighbour=(np.argmax(near, axis=1) if len(centroids) > 1
                 else np.zeros(1, np.int64)),
      topic_rank=_zipf_table(cfg.title_topic_words, cfg.title_word_exponent),
      pool_rank=_zipf_table(len(FUNCTION_WORDS), cfg.title_word_exponent),
      word_bytes=word_bytes)


def _title_unit(cfg: SyntheticConfig, truth: dict, model: _TitleModel, unit: int,
                out: np.ndarray) -> None:
  """Titles of items [unit U, (unit + 1) U) (U = _TITLE_ITEMS), written into ``out``.

  Each word is a function word (share ``title_noise``) or a topic word; a topic word comes
  from the item's cluster or, with probability m_i ~ U(0, title_mix), from its second
  topic (the other centroid nearest to its factor: the title hints at its sub-genre);
  then, with probability ``title_neighbour_share``, from that topic's nearest topic's
  list (neighbouring topics share words); then a Zipf rank within the list. Each unit
  draws from its own seed, as the event chunks do.
  """
  K, W, T = cfg.num_clusters, cfg.title_topic_words, cfg.title_tokens
  lo = unit * _TITLE_ITEMS
  hi = min(cfg.num_items, lo + _TITLE_ITEMS)
  n = hi - lo
  rng = _rng(cfg.seed, 4, unit)
  k = truth["item_cluster"][lo:hi].astype(np.int64)
  second = k
  if K > 1:
    sim = _dot(truth["item_factors"][lo:hi], truth["cluster_centroids"].T)
    sim[np.arange(n), k] = -np.inf
    second = np.argmax(sim, axis=1)
  mix = np.float32(cfg.title_mix) * rng.random(n, dtype=np.float32)
  topic = np.where(rng.random((n, T), dtype=np.float32) < mix[:, None],
                   second[:, None], k[:, None])
  topic = np.where(rng.random((n, T), dtype=np.float32) < cfg.title_neighbour_share,
                   model.neighbour[topic], topic)
  quantile = rng.integers(0, 1 << 16, (2, n, T), dtype=np.uint16)
  word = np.where(rng.random((n, T), dtype=np.float32) < cfg.title_noise,
                  K * W + np.take(model.pool_rank, quantile[0]),
                  topic * W + np.take(model.topic_rank, quantile[1]))
  # A title is a gather of padded words; dropping the padding leaves "w w w\n" lines.
  text = np.take(model.word_bytes, word, axis=0)               # [n, T, width + 1]
  text[:, -1, -1] = ord("\n")
  flat = text.ravel()
  out[lo:hi] = flat[flat != 0].tobytes().decode("ascii").split("\n")[:-1]


def _side_tables(cfg: SyntheticConfig, truth: dict, user_names: np.ndarray,
                 item_names: np.ndarray,
                 titles: Optional[np.ndarray]) -> tuple[types.Table, types.Table]:
  """User table (segment, region) and item table (category, tags, price_bucket)."""
  rng = _rng(cfg.seed, 2)
  N, K, T = cfg.num_items, cfg.num_clusters, cfg.tags_per_cluster
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
    for name in ("tags", "title"):
      if name in columns:
        kinds[name] = types.TOKEN_SEQ    # a title is text with --text_features=title
    return types.Table(path="<synthetic>", columns=columns, kinds=kinds,
                       line_numbers=np.arange(n, dtype=np.int64) + 2)

  users = table({"user_id": user_names,
                 "segment": ids("s", K)[truth["user_segment"]],
                 "region": ids("r", cfg.num_regions)[truth["user_region"]]})
  item_columns = {"item_id": item_names,
                  "category": ids("c", K)[category],
                  "tags": tags.astype(object),
                  "price_bucket": ids("p", cfg.num_price_buckets)[truth["item_price_bucket"]]}
  if titles is not None:
    item_columns["title"] = titles
  items = table(item_columns)
  return users, items


def generate(config: Optional[SyntheticConfig] = None) -> SyntheticData:
  """Draws a dataset, and the ground truth it came from, from ``config`` (or defaults).

  The same config gives the same data on any machine and thread count. Cost is about
  O(events + users x clusters); 20M events over 1M items and users take ~2 GB.
  """
  cfg = config or SyntheticConfig()
  cfg.validate()
  world, truth = _build_world(cfg)
  n = cfg.num_interactions
  user_names, item_names = ids("u", cfg.num_users), ids("i", cfg.num_items)
  item = np.empty(n, np.int64)
  timestamp = np.empty(n, np.int64)
  affinity = np.empty(n, np.float32)

  # Chunks and side tables fill disjoint outputs from their own seeds, so the result does
  # not depend on the thread count or the order they run in.
  titles = np.empty(cfg.num_items, object) if cfg.title_tokens else None
  with concurrent.futures.ThreadPoolExecutor(_num_threads(cfg)) as pool:
    title_jobs = []
    if titles is not None:
      model = _title_model(cfg, truth["cluster_centroids"])
      title_jobs = [pool.submit(_title_unit, cfg, truth, model, unit, titles)
                    for unit in range(-(-cfg.num_items // _TITLE_ITEMS))]
    user_id_job = pool.submit(
        lambda: user_names[np.repeat(np.arange(cfg.num_users), np.diff(world.user_start))])
    jobs = [pool.submit(_sample_chunk, world, cfg, c, lo, hi, item, timestamp, affinity)
            for c, (lo, hi) in enumerate(_chunks(world.user_start, cfg.chunk_size))]
    for job in title_jobs:
      job.result()
    tables = pool.submit(_side_tables, cfg, truth, user_names, item_names, titles)
    for job in jobs:
      job.result()
    user_table, item_table = tables.result()
    user_id = user_id_job.result()
  # One gather of shared str objects: a per-chunk one would count references three times.
  item_id = item_names[item]

  # Ratings: standardised affinity plus noise, rounded into 1..5.
  rng = _rng(cfg.seed, 3)
  z = (affinity - affinity.mean()) / max(float(affinity.std()), 1e-6)
  z += cfg.label_noise * rng.standard_normal(n, dtype=np.float32)
  label = np.clip(np.rint(3.0 + 1.2 * z), 1, 5).astype(np.float32)

  interactions = types.Interactions(
      path="<synthetic>", user_id=user_id, item_id=item_id, timestamp=timestamp, label=label,
      line_numbers=np.arange(n, dtype=np.int64) + 2)
  dataset = types.RawDataset("synthetic", interactions, user_table, item_table)
  return SyntheticData(dataset=dataset, config=cfg, **truth)
