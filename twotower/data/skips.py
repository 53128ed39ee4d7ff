"""Bad rows of an input file: fatal, or under ``allow_bad_rows`` skipped *and counted*.

Nothing is dropped silently: every skip is counted by reason, logged with the first line
numbers, and reported in metrics.json by the caller.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np
from absl import logging

from twotower.data.types import DataError

SHOW_LINES = 5   # line numbers quoted in a "skipped N rows" warning

# ----------------------------------------------------------------------------------------
# Bookkeeping of skipped rows.


class Skips:
  """Rows dropped under ``allow_bad_rows``: counted per reason, logged once per file."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self._lines: list[np.ndarray] = []

  def add(self, reason: str, lines: np.ndarray) -> None:
    lines = np.asarray(lines, dtype=np.int64)
    if lines.size:
      self.counts[reason] += int(lines.size)
      self._lines.append(lines)

  def merge(self, other: Skips) -> None:
    self.counts.update(other.counts)
    self._lines.extend(other._lines)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def log(self, path: str) -> None:
    if not self.total:
      return
    first = np.unique(np.concatenate(self._lines))[:SHOW_LINES]
    reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
    logging.warning("%s: skipped %d bad row(s) under allow_bad_rows (%s); first at "
                    "line(s) %s", path, self.total, reasons,
                    ", ".join(str(x) for x in first))


def fail_or_skip(bad: np.ndarray, lines: np.ndarray, *, allow_bad_rows: bool,
                  skips: Skips, reason: str,
                  error: Callable[[int], DataError]) -> np.ndarray:
  """Raises ``error(first bad row)``, or records the bad rows; returns the rows kept."""
  if not bad.any():
    return ~bad
  if not allow_bad_rows:
    raise error(int(np.flatnonzero(bad)[0]))
  skips.add(reason, lines[bad])
  return ~bad
