"""Per-user temporal split into train / validation / test, with no leakage.

Each user's events are ordered by time; the latest ``test_fraction`` go to test and the
``valid_fraction`` before them to validation. A boundary that would cut through a group of
events sharing one timestamp is moved to the start of that group, so every held-out event is
no earlier than every training event of the same user. Users with fewer than
``min_user_interactions`` events keep all of them in train.
"""
from __future__ import annotations

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


def run_starts(*keys: np.ndarray) -> np.ndarray:
  """For sorted rows, the index where each row's run of equal ``keys`` begins."""
  n = len(keys[0])
  if n == 0:
    return np.zeros(0, np.int64)
  new = np.zeros(n, bool)
  new[0] = True
  for k in keys:
    new[1:] |= k[1:] != k[:-1]
  idx = np.where(new, np.arange(n), 0)
  return np.maximum.accumulate(idx)


def temporal_split(user: np.ndarray, timestamp: np.ndarray, *, valid_fraction: float,
                   test_fraction: float, min_user_interactions: int = 3) -> np.ndarray:
  """Split codes (TRAIN/VALID/TEST, int8) for events sorted by (user, timestamp)."""
  for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= frac < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {frac}")
  if valid_fraction + test_fraction >= 1.0:
    raise ValueError("valid_fraction + test_fraction must be < 1")
  n = len(user)
  codes = np.full(n, TRAIN, np.int8)
  if n == 0:
    return codes
  user_start = run_starts(user)
  group_start = run_starts(user, timestamp)
  starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
  counts = np.diff(np.r_[starts, n])
  eligible = counts >= min_user_interactions

  def held_out(frac):
    k = np.where(frac > 0, np.maximum(1, np.floor(counts * frac)), 0).astype(np.int64)
    return np.where(eligible, k, 0)

  n_test, n_valid = held_out(test_fraction), held_out(valid_fraction)
  # Keep at least one training event per eligible user.
  n_valid = np.minimum(n_valid, np.maximum(counts - n_test - 1, 0))

  def boundary(k_from_end):
    b = starts + counts - k_from_end
    inside = k_from_end > 0
    b_safe = np.minimum(b, n - 1)
    moved = group_start[b_safe]
    # Move to the start of a tied-timestamp group unless that would empty the train part.
    return np.where(inside & (moved > starts), moved, b)

  test_b = boundary(n_test)
  valid_b = np.minimum(boundary(n_test + n_valid), test_b)
  pos = np.arange(n)
  per_event = np.repeat(np.arange(len(starts)), counts)
  codes[pos >= valid_b[per_event]] = VALID
  codes[pos >= test_b[per_event]] = TEST
  # Users whose tie-moved valid boundary met the test boundary simply have no validation.
  del user_start
  return codes
