"""Readers for interaction logs, feature tables and whole datasets (CSV, TSV, RecBole).

Every problem in an input file becomes a ``DataError`` that names the file, the physical
line and the field, so that a user can fix the data rather than debug a stack trace. Bad
rows are either fatal or, under ``allow_bad_rows``, skipped *and counted*; nothing is
dropped silently.

The layers below: data/scan.py (record layout from the raw bytes), data/tables.py
(a file as a Table), data/skips.py (bad rows, counted).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import pandas as pd
from absl import logging

from twotower.data import types
from twotower.data.scan import CATEGORICAL, INTEGER, INTEGER_TEXT
from twotower.data.skips import SHOW_LINES, Skips, fail_or_skip
from twotower.data.tables import read_file, read_table
from twotower.data.types import DataError

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
LABEL_COLUMNS = ("label", "rating")   # first one present wins

# ----------------------------------------------------------------------------------------
# Interactions.

_TIMESTAMP_HELP = ("expected seconds since the epoch (an integer or a float) or an ISO-8601 "
                   "date such as 2020-01-31 or 2020-01-31T12:00:00Z")
_MAX_TIMESTAMP = 2**62
# The latest instant pandas can hold (2262-04-11). In a file of epoch seconds, later ones
# are typos or milliseconds, and would silently become a user's most recent, held-out event.
# A file whose timestamps are mostly past it is taken to be in a finer unit (milliseconds,
# microseconds): timestamps only order events, so any consistent unit works.
_LATEST_TIMESTAMP = int(pd.Timestamp.max.timestamp())
_TOO_LATE = "is after 2262-04-11, the latest supported date: " + _TIMESTAMP_HELP
_TOO_LATE_NUMBER = ("is after 2262-04-11 in a file of epoch seconds (milliseconds? divide by "
                    "1000): " + _TIMESTAMP_HELP)


def _to_float(values) -> np.ndarray:
  """Strings -> float64, NaN where unparsable. Tries the fast exact cast first."""
  if isinstance(values, pd.Categorical):   # each distinct string converted once
    return _to_float(np.asarray(values.categories, dtype=object))[values.codes]
  try:
    return values.astype(np.float64)
  except (ValueError, TypeError, OverflowError):
    return pd.to_numeric(values, errors="coerce").astype(np.float64)


def _parse_timestamps(values: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Strings (or int64) -> (int64 epoch seconds, reason per row: '' when fine).

  The reasons are None when every row is fine, so that a clean file builds no per-row
  Python objects.
  """
  try:   # the common case, and exact beyond 2**53
    seconds = values.astype(np.int64, copy=False)
  except (ValueError, TypeError, OverflowError):
    seconds = None
  if seconds is not None:
    negative = seconds < 0
    late = seconds > _LATEST_TIMESTAMP
    if not negative.any() and (not late.any() or np.median(seconds) > _LATEST_TIMESTAMP):
      return seconds, None   # what the general path below finds: no reason anywhere
  reason = np.full(len(values), "", dtype=object)
  if seconds is None:
    number = _to_float(values)
    seconds = np.zeros(len(values), np.int64)
    numeric = np.isfinite(number) & (np.abs(number) < _MAX_TIMESTAMP)
    seconds[numeric] = np.trunc(number[numeric]).astype(np.int64)
    other = np.flatnonzero(~numeric)
    if other.size:
      iso = pd.to_datetime(pd.Series(values[other], dtype=object), errors="coerce",
                           utc=True, format="ISO8601")
      parsed = iso.notna().to_numpy()
      when = iso[parsed].dt.tz_convert(None).to_numpy().astype("datetime64[s]")
      seconds[other[parsed]] = when.astype(np.int64)
      unparsed = other[~parsed]
      reason[unparsed] = "cannot be parsed: " + _TIMESTAMP_HELP
      reason[unparsed[np.isinf(number[unparsed])]] = "is not finite: " + _TIMESTAMP_HELP
      huge = np.isfinite(number[unparsed])
      reason[unparsed[huge]] = "is out of range: " + _TIMESTAMP_HELP
      reason[unparsed[huge & (number[unparsed] > 0)]] = _TOO_LATE_NUMBER
      # Dates pandas cannot hold fail to parse; say why rather than "cannot be parsed".
      year = pd.to_numeric(pd.Series(values[unparsed], dtype=object).str.extract(
          r"^\s*\+?(\d{4,})-\d\d", expand=False), errors="coerce").to_numpy()
      reason[unparsed[year >= pd.Timestamp.max.year]] = _TOO_LATE
  reason[(seconds < 0) & (reason == "")] = "is negative: " + _TIMESTAMP_HELP
  fine = reason == ""
  if fine.any() and np.median(seconds[fine]) <= _LATEST_TIMESTAMP:   # a file of seconds
    reason[(seconds > _LATEST_TIMESTAMP) & fine] = _TOO_LATE_NUMBER
  return seconds, reason


def interactions_from_table(table: types.Table, *, allow_bad_rows: bool,
                             skips: Skips) -> types.Interactions:
  """Validates timestamps and labels of an interaction table."""
  lines = table.line_numbers
  seconds, ts_reason = _parse_timestamps(table.columns["timestamp"])
  bad = np.zeros(len(lines), bool) if ts_reason is None else ts_reason != ""
  label_name = next((c for c in LABEL_COLUMNS if c in table.columns), None)
  label = label_bad = None
  if label_name:
    raw_label = table.columns[label_name]
    with np.errstate(over="ignore"):
      label = _to_float(raw_label).astype(np.float32)
    label_bad = ~np.isfinite(label)
    bad |= label_bad

  if bad.any() and not allow_bad_rows and not _all_str(table.columns):
    raise _NeedsText()   # the error quotes the value as written, so it needs the str

  def error(i: int) -> DataError:
    if ts_reason is not None and ts_reason[i]:
      value = table.columns["timestamp"][i]
      return DataError(f"timestamp {value!r} {ts_reason[i]}", path=table.path,
                       line=int(lines[i]), field="timestamp")
    value = raw_label[i]
    what = "is empty" if value == "" else "is not a finite number"
    return DataError(f"{label_name} {value!r} {what}", path=table.path,
                     line=int(lines[i]), field=label_name)

  ok = fail_or_skip(bad, lines, allow_bad_rows=allow_bad_rows, skips=skips,
                     reason="with a bad timestamp or " + (label_name or "label"),
                     error=error)
  if not ok.any():
    raise DataError(f"no usable interactions: all {skips.total} rows were bad",
                    path=table.path)
  rows: Any = slice(None) if ok.all() else ok   # a slice: no copies of the columns
  return types.Interactions(
      path=table.path, user_id=table.columns["user_id"][rows],
      item_id=table.columns["item_id"][rows], timestamp=seconds[rows],
      label=None if label is None else label[rows], line_numbers=lines[rows],
      skipped=skips.total)


class _NeedsText(Exception):
  """A typed (int64 or categorical) table has a bad row: re-read it as str to report it."""


def _all_str(columns: dict[str, np.ndarray]) -> bool:
  return all(isinstance(c, np.ndarray) and c.dtype == object for c in columns.values())


# Typed parse of interaction logs: timestamps as integers, labels (few distinct values) as
# categories, integer ids formatted once per distinct id; every id is still a str.
_INTERACTION_TYPES = {"timestamp": INTEGER, "user_id": INTEGER_TEXT,
                      "item_id": INTEGER_TEXT, **{c: CATEGORICAL for c in LABEL_COLUMNS}}


def read_interactions(path: str, *, allow_bad_rows: bool = False) -> types.Interactions:
  """Reads an interaction log: user_id, item_id, timestamp and optional rating or label.

  Timestamps are seconds since the epoch (floats are truncated) or ISO-8601 dates and
  datetimes (UTC unless they carry an offset), from 1970 to 2262-04-11: later ones are
  rejected, as they are usually milliseconds. ``label`` wins over ``rating``.

  Raises:
    DataError: naming the file, line and field of the first problem.
  """
  def read(typed):
    skips = Skips()
    table = read_file(path, required=INTERACTION_COLUMNS, allow_bad_rows=allow_bad_rows,
                  skips=skips, infer_kinds=False, typed=typed)
    return table, skips, interactions_from_table(table, allow_bad_rows=allow_bad_rows,
                                                  skips=skips)

  try:
    table, skips, interactions = read(_INTERACTION_TYPES)
  except _NeedsText:   # only files with bad timestamps or labels read twice
    table, skips, interactions = read(None)
  skips.log(table.path)
  return interactions


def read_features(path: str, key: str, *, allow_bad_rows: bool = False) -> types.Table:
  """Reads a side-feature table with one row per ``key`` ('user_id' or 'item_id')."""
  return read_table(path, required=(key,), key=key, allow_bad_rows=allow_bad_rows)


# ----------------------------------------------------------------------------------------
# Whole datasets.


def warn_missing_features(interactions: types.Interactions,
                           table: Optional[types.Table], key: str) -> None:
  """Ids without a feature row fall back to defaults later; say how many there are."""
  if table is None:
    return
  ids = pd.unique(getattr(interactions, key))
  absent = ids[~pd.Index(ids).isin(table.columns[key])]
  if len(absent):
    logging.warning(
        "%d of %d %s values in %s have no row in %s (e.g. %s); they will use default "
        "features", len(absent), len(ids), key, interactions.path, table.path,
        ", ".join(repr(x) for x in absent[:SHOW_LINES]))


def read_dataset_files(interactions: str, user_features: Optional[str] = None,
                       item_features: Optional[str] = None, *,
                       allow_bad_rows: bool = False,
                       name: Optional[str] = None) -> types.RawDataset:
  """The ``--interactions/--user_features/--item_features`` files as one dataset."""
  inter = read_interactions(interactions, allow_bad_rows=allow_bad_rows)
  users = (read_features(user_features, "user_id", allow_bad_rows=allow_bad_rows)
           if user_features else None)
  items = (read_features(item_features, "item_id", allow_bad_rows=allow_bad_rows)
           if item_features else None)
  warn_missing_features(inter, users, "user_id")
  warn_missing_features(inter, items, "item_id")
  if name is None:
    name = os.path.splitext(os.path.basename(os.fspath(interactions)))[0]
  return types.RawDataset(name=name, interactions=inter, user_features=users,
                          item_features=items)
