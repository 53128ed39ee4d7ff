"""The query a returning user makes at serving time: their last L items over the whole log.

Used to tune and report the index on real queries and for the export's per-user defaults.
"""
from __future__ import annotations

import numpy as np

from twotower.data.prepare import gather_history


def latest_histories(data, history_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Every user with events, and their last L items over the whole log (the query a
  returning user makes at serving time): (user ids [U], item ids [U, L])."""
  ev = data.events
  if len(ev) == 0:
    return np.zeros(0, np.int32), np.zeros((0, history_length), np.int32)
  first = np.flatnonzero(np.r_[True, ev.user[1:] != ev.user[:-1]])
  end = np.r_[first[1:], len(ev)]
  history = gather_history(ev.item, first.astype(np.int64), end.astype(np.int64),
                           history_length)
  return ev.user[first].astype(np.int32), history
