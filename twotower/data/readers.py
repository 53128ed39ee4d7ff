"""Readers for interaction logs and feature tables: CSV, TSV and RecBole atomic files.

Every problem in an input file becomes a ``DataError`` that names the file, the physical
line and the field, so that a user can fix the data rather than debug a stack trace. Bad
rows are either fatal or, under ``allow_bad_rows``, skipped *and counted*; nothing is
dropped silently.

Reading is vectorised so that multi-million-row logs take seconds: record boundaries,
field counts and line numbers come from numpy over the raw bytes, the values from pandas'
C parser. Python's ``csv`` module is used only as a fallback for quoting that the byte
scan cannot follow (a stray quote in the middle of a field).
"""
from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import functools
import io
import os
import re
import warnings
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import pandas as pd
from absl import logging

from twotower.data import types
from twotower.data.types import DataError

# RecBole atomic files are tab separated whatever their suffix says.
_TAB_SUFFIXES = (".tsv", ".inter", ".user", ".item")
_RECBOLE_TYPES = {"token": types.TOKEN, "token_seq": types.TOKEN_SEQ,
                  "float": types.TOKEN, "float_seq": types.TOKEN_SEQ}
# An untyped column is multi-valued when this share of its non-empty values has a separator.
_MULTI_VALUE_FRACTION = 0.05
_MULTI_VALUE_PATTERN = r"[ |]"
_SHOW_LINES = 5   # line numbers quoted in a "skipped N rows" warning
# Longest value accepted: the csv module's default field_size_limit, so that the fast and
# the fallback parser agree. Longer values are a lost line break or quote, not an id.
_MAX_FIELD_CHARS = 131_072

_Quoting = Literal[0, 1, 2, 3]   # csv.QUOTE_MINIMAL, _ALL, _NONNUMERIC, _NONE

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
LABEL_COLUMNS = ("label", "rating")   # first one present wins

_NEWLINE, _CR, _QUOTE = 10, 13, 34


def _byte_table(values) -> np.ndarray:
  table = np.zeros(256, bool)
  table[list(values)] = True
  return table


# Bytes that may begin / end a character that ``str.strip`` removes: ASCII whitespace,
# and the first / last byte of the UTF-8 (or Latin-1) encodings of Unicode spaces.
_ASCII_SPACE = [9, 10, 11, 12, 13, 28, 29, 30, 31, 32]
_MAY_BEGIN_SPACE = _byte_table(_ASCII_SPACE + [0x85, 0xA0, 0xC2, 0xE1, 0xE2, 0xE3])
_MAY_END_SPACE = _byte_table(_ASCII_SPACE + list(range(0x80, 0x8B)) +
                             [0x9F, 0xA0, 0xA8, 0xA9, 0xAF])


# ----------------------------------------------------------------------------------------
# Bookkeeping of skipped rows.


class _Skips:
  """Rows dropped under ``allow_bad_rows``: counted per reason, logged once per file."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self._lines: list[np.ndarray] = []

  def add(self, reason: str, lines: np.ndarray) -> None:
    lines = np.asarray(lines, dtype=np.int64)
    if lines.size:
      self.counts[reason] += int(lines.size)
      self._lines.append(lines)

  def merge(self, other: _Skips) -> None:
    self.counts.update(other.counts)
    self._lines.extend(other._lines)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def log(self, path: str) -> None:
    if not self.total:
      return
    first = np.unique(np.concatenate(self._lines))[:_SHOW_LINES]
    reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
    logging.warning("%s: skipped %d bad row(s) under allow_bad_rows (%s); first at "
                    "line(s) %s", path, self.total, reasons,
                    ", ".join(str(x) for x in first))


def _fail_or_skip(bad: np.ndarray, lines: np.ndarray, *, allow_bad_rows: bool,
                  skips: _Skips, reason: str,
                  error: Callable[[int], DataError]) -> np.ndarray:
  """Raises ``error(first bad row)``, or records the bad rows; returns the rows kept."""
  if not bad.any():
    return ~bad
  if not allow_bad_rows:
    raise error(int(np.flatnonzero(bad)[0]))
  skips.add(reason, lines[bad])
  return ~bad


# ----------------------------------------------------------------------------------------
# Layout: where the records are, how many fields each has, which lines cannot be decoded.


@dataclasses.dataclass
class _Layout:
  """The shape of a delimited file before its values are parsed."""
  header: Optional[list[str]]   # header fields, None for headerless files
  header_line: int              # 1-based; 0 for headerless files
  lines: np.ndarray             # 1-based physical start line of each non-blank data record
  num_fields: np.ndarray        # fields per data record
  undecodable: np.ndarray       # bool per data record
  # (keep mask, width, typed) -> columns; see _fast_layout's parse for ``typed``.
  parse: Callable[..., list]
  # False when quotes were followed by parity alone: a stray quote inside a field could
  # have misled the scan, so any anomaly is re-checked with the csv module.
  trusted: bool = True
  # True when no value can start or end with whitespace, so stripping can be skipped.
  clean: bool = False
  # Bytes in the longest data record; 0 when the parser itself limits field sizes.
  longest: int = 0
  # Per data record: whether it spans several physical lines (csv module path only).
  multiline: Optional[np.ndarray] = None


# Leading bytes of files that are not text a reader can take, and what they are. UTF-32's
# little-endian mark begins with UTF-16's, so it comes first.
_NOT_TEXT = ((b"\xff\xfe\x00\x00", "UTF-32 text"), (b"\x00\x00\xfe\xff", "UTF-32 text"),
             (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"),
             (b"\x1f\x8b", "gzip-compressed"), (b"\xfd7zXZ\x00", "xz-compressed"),
             (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"PK\x03\x04", "a zip archive"))


def _read_bytes(path: str) -> bytes:
  if not os.path.exists(path):
    raise DataError("file not found", path=path)
  if os.path.isdir(path):
    raise DataError("is a directory, expected a CSV or TSV file", path=path)
  with open(path, "rb") as f:
    buf = f.read()
  kind = next((kind for magic, kind in _NOT_TEXT if buf.startswith(magic)), None)
  if kind:
    raise DataError(f"is {kind}, not valid UTF-8 CSV or TSV; "
                    f"{'re-save it as UTF-8' if 'UTF' in kind else 'decompress it first'}",
                    path=path, line=1)
  if b"\r" in buf and b"\n" not in buf:   # classic Mac line endings: bare CRs
    buf = buf.replace(b"\r", b"\n")
  return buf[3:] if buf.startswith(b"\xef\xbb\xbf") else buf


def _delimiter_for(path: str, buf: bytes) -> str:
  lower = path.lower()
  if lower.endswith(_TAB_SUFFIXES):
    return "\t"
  if lower.endswith(".csv"):
    return ","
  first_line = buf.split(b"\n", 1)[0]
  return "\t" if b"\t" in first_line else ","


def _undecodable_lines(buf: bytes, path: str, encoding: str,
                       allow_bad_rows: bool) -> np.ndarray:
  """1-based lines that do not decode; raises on the first one unless bad rows are allowed."""
  if buf.isascii() and codecs.lookup(encoding).name in ("utf-8", "ascii", "iso8859-1"):
    return np.zeros(0, np.int64)   # no decode (and no copy of the file) needed
  try:
    buf.decode(encoding)
    return np.zeros(0, np.int64)
  except UnicodeDecodeError as e:
    line = buf.count(b"\n", 0, e.start) + 1
    if not allow_bad_rows:
      column = e.start - (buf.rfind(b"\n", 0, e.start) + 1) + 1
      raise DataError(
          f"not valid {encoding.upper()}: byte 0x{buf[e.start]:02x} at column {column}; "
          f"re-save the file as {encoding.upper()} (or pass --allow_bad_rows to skip "
          f"such rows)", path=path, line=line) from None
  # Error path only: find every bad line (a loop over lines, not over the file's bytes).
  bad = []
  for i, chunk in enumerate(buf.split(b"\n")):
    try:
      chunk.decode(encoding)
    except UnicodeDecodeError:
      bad.append(i + 1)
  return np.asarray(bad, np.int64)


def _fast_layout(buf: bytes, path: str, delimiter: str, quoting: _Quoting, has_header: bool,
                 bad_lines: np.ndarray, encoding: str) -> Optional[_Layout]:
  """Record boundaries by numpy over the bytes; None when the quoting is not balanced."""
  arr = np.frombuffer(buf, np.uint8)
  newline = arr == _NEWLINE
  separator = arr == ord(delimiter)
  quoted = quoting != csv.QUOTE_NONE and b'"' in buf
  if quoted:
    # Inside a quoted field the count of quotes so far is odd; an escaped quote ("")
    # flips the parity twice, so the parity of a running count (mod 256) is enough.
    inside = (np.cumsum(arr == _QUOTE, dtype=np.uint8) & 1).astype(bool)
    if inside[-1]:
      return None
    newline &= ~inside
    separator &= ~inside
  breaks = np.flatnonzero(newline)
  starts = np.concatenate([[0], breaks + 1])
  ends = np.concatenate([breaks + 1, [len(arr)]])   # one past the terminator
  if starts[-1] == len(arr):   # the file ends with a newline
    starts, ends = starts[:-1], ends[:-1]
  content_end = ends.copy()
  has_nl = (content_end > starts) & (arr[np.maximum(content_end - 1, 0)] == _NEWLINE)
  content_end -= has_nl
  has_cr = (content_end > starts) & (arr[np.maximum(content_end - 1, 0)] == _CR)
  content_end -= has_cr
  blank = content_end == starts
  if quoted:
    all_breaks = np.flatnonzero(arr == _NEWLINE)
    lines = np.searchsorted(all_breaks, starts) + 1
  else:
    lines = np.arange(1, len(starts) + 1)
  seps = np.flatnonzero(separator)
  # A record's separators lie before its terminator, which ends where the next one starts.
  num_fields = np.diff(np.searchsorted(seps, np.append(starts, ends[-1:]))) + 1
  clean = not quoted and (_no_space_bytes(buf, arr, len(breaks) + int(has_cr.sum()),
                                          len(seps) if ord(delimiter) <= 32 else 0) or
                          not _may_need_strip(arr, seps, starts, content_end, delimiter))
  undecodable = (np.isin(lines, bad_lines) if bad_lines.size
                 else np.zeros(len(lines), bool))
  if quoted and bad_lines.size:   # a record may span lines; any bad one spoils it
    last_line = np.concatenate([lines[1:] - 1, [np.iinfo(np.int64).max]])
    hit = np.searchsorted(bad_lines, lines), np.searchsorted(bad_lines, last_line, "right")
    undecodable = hit[1] > hit[0]

  nonblank = np.flatnonzero(~blank)
  header, header_line = None, 0
  if has_header:
    h = nonblank[0]
    header_line = int(lines[h])
    if undecodable[h]:
      raise DataError(f"the header row is not valid {encoding.upper()}", path=path,
                      line=header_line)
    text = buf[starts[h]:content_end[h]].decode(encoding)
    try:
      header = next(csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting))
    except csv.Error as e:
      raise DataError(f"malformed header row: {e}", path=path, line=header_line) from None
    nonblank = nonblank[1:]
  starts, ends, lines = starts[nonblank], ends[nonblank], lines[nonblank]
  record_end = content_end[nonblank]

  def field_lengths(keep: np.ndarray, width: int, column: int) -> int:
    """Total bytes of one column's fields over the kept records (all have ``width``)."""
    kept_starts = starts[keep]
    first = int(np.searchsorted(seps, kept_starts[0]))
    if keep.all() and len(seps) - first == len(kept_starts) * (width - 1):
      # Every separator from the first record on is one of theirs, width - 1 each, in order.
      def separator(j):
        return seps[first + j::width - 1]
    else:
      firsts = np.searchsorted(seps, kept_starts)   # each record's first separator

      def separator(j):
        return seps[firsts + j]
    begin = kept_starts if column == 0 else separator(column - 1) + 1
    end = separator(column) if column < width - 1 else record_end[keep]
    return int(end.sum()) - int(begin.sum())

  def read(keep: np.ndarray, width: int, dtype, usecols=None) -> pd.DataFrame:
    if keep.all() and not blank.any() and len(starts):
      source = io.BytesIO(buf)   # shares buf; reading starts at the first record
      source.seek(int(starts[0]))
    else:
      # Copy only the kept records; every record carries its own line terminator.
      mark = np.zeros(len(arr) + 1, np.int8)
      mark[starts[keep]] += 1
      mark[ends[keep]] -= 1
      source = io.BytesIO(arr[np.cumsum(mark[:-1], dtype=np.int8).astype(bool)].tobytes())
    frame = pd.read_csv(
        source, sep=delimiter, header=None, names=list(range(width)),
        usecols=usecols, dtype=dtype, keep_default_na=False, na_filter=False, engine="c",
        skip_blank_lines=False, quoting=quoting, encoding=encoding)
    if len(frame) != int(keep.sum()):
      raise _LayoutMismatch()
    return frame

  def parse(keep: np.ndarray, width: int, typed: Optional[dict[int, str]] = None) -> list:
    """Columns as object arrays of str, except where ``typed`` asks otherwise.

    ``typed[i] == _INTEGER``: int64 when every value is a plain integer (pandas' own
    integer parser, as exact as ``int``), else str. ``typed[i] == _CATEGORICAL``: a
    ``pd.Categorical`` of the str values, for columns with few distinct values.
    ``typed[i] == _INTEGER_TEXT``: str, but parsed as integers and each distinct one
    formatted once when every field is exactly its integer's decimal text (ids such as
    ``123``; ``007`` or ``+5`` are not, and take the str parse). All three skip pandas'
    building a Python object per value; a column that does not fit its type is read again
    as str, alone.
    """
    if typed:
      dtype = {i: (str if i not in typed else
                   "category" if typed[i] == _CATEGORICAL else None) for i in range(width)}
      dtype = {i: d for i, d in dtype.items() if d is not None}   # integers are inferred
      try:
        with warnings.catch_warnings():   # mixed-type chunks: seen below, not worth a warning
          warnings.simplefilter("ignore", pd.errors.DtypeWarning)
          frame = read(keep, width, dtype)
        columns = [_typed_column(frame[i], typed.get(i),
                                 functools.partial(field_lengths, keep, width, i))
                   for i in range(width)]
        misfits = [i for i, column in enumerate(columns) if column is None]
        if misfits:   # e.g. zero-padded ids: only those columns pay for the str parse
          frame = read(keep, width, str, usecols=misfits)
          for i in misfits:
            columns[i] = frame[i].to_numpy(dtype=object)
        return columns
      except (ValueError, TypeError, OverflowError, _LayoutMismatch):
        pass   # the str parse below fails (or not) exactly as without ``typed``
    frame = read(keep, width, str)
    return [frame[i].to_numpy(dtype=object) for i in range(width)]

  longest = int((content_end[nonblank] - starts).max(initial=0))
  return _Layout(header, header_line, lines, num_fields[nonblank],
                 undecodable[nonblank], parse, trusted=not quoted, clean=clean,
                 longest=longest)


def _no_space_bytes(buf: bytes, arr: np.ndarray, terminators: int, separators: int) -> bool:
  """True when no byte can be whitespace but the line terminators and separators.

  One compare over the file instead of ``_may_need_strip``'s gathers at every field edge.
  """
  return buf.isascii() and int(np.count_nonzero(arr <= 32)) == terminators + separators


def _may_need_strip(arr: np.ndarray, seps: np.ndarray, starts: np.ndarray,
                    content_end: np.ndarray, delimiter: str) -> bool:
  """Whether some unquoted field may begin or end with whitespace (false alarms are ok).

  Looks only at the bytes next to field boundaries, so that the common case of clean
  data skips a per-value ``str.strip`` that would cost more than the parsing.
  """
  def check(positions: np.ndarray, table: np.ndarray) -> bool:
    positions = positions[(positions >= 0) & (positions < len(arr))]
    values = arr[positions]
    return bool((table[values] & (values != ord(delimiter)) & (values != _NEWLINE)).any())

  return (check(np.concatenate([starts, seps + 1]), _MAY_BEGIN_SPACE) or
          check(np.concatenate([content_end - 1, seps - 1]), _MAY_END_SPACE))


class _LayoutMismatch(Exception):
  """The byte scan and pandas disagree about the records: use the csv module instead."""


# Column types ``_read`` may be asked for (``typed``), instead of str.
_INTEGER, _CATEGORICAL, _INTEGER_TEXT = "integer", "categorical", "integer_text"
# 10**1 .. 10**19: the decimal digits of a magnitude m are searchsorted(m) + 1.
_POWERS_OF_TEN = 10 ** np.arange(1, 20, dtype=np.uint64)


def _typed_column(series: pd.Series, kind: Optional[str], field_lengths: Callable[[], int]):
  """A column of the typed parse as asked for, or None when only str will do."""
  if kind is None:
    return series.to_numpy(dtype=object)   # read as str
  if kind == _CATEGORICAL:
    return series.array if isinstance(series.array, pd.Categorical) else None
  values = series.to_numpy()
  if kind == _INTEGER and values.dtype == np.int64:
    return values
  if kind == _INTEGER_TEXT and values.dtype == np.int64:
    # Any other text of an integer ('007', '+5', ' 5', '"5"', '-0') is longer than str(v),
    # so equal totals mean every field is exactly str(v).
    if int(_decimal_length(values).sum()) != field_lengths():
      return None
    return _format_integers(values)
  if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
    return values   # what the str parse gives: pandas' inference falls back to it
  return None


def _format_integers(values: np.ndarray) -> np.ndarray:
  """Object array of str(v) for int64 values, each distinct value formatted once."""
  low, high = int(values.min()), int(values.max())
  if low >= 0 and high < 4 * len(values) + 1024:   # ids from a dense range: a lookup table
    present = np.zeros(high + 1, bool)
    present[values] = True
    table = np.empty(high + 1, object)
    distinct = np.flatnonzero(present)
    table[distinct] = distinct.astype(str).astype(object)
    return table[values]
  codes, distinct = pd.factorize(values)
  return distinct.astype(str).astype(object)[codes]


def _decimal_length(values: np.ndarray) -> np.ndarray:
  """Characters of str(v) for each int64 v."""
  magnitude = np.abs(values).view(np.uint64)   # exact for int64 min too (2**63)
  return np.searchsorted(_POWERS_OF_TEN, magnitude, side="right") + 1 + (values < 0)


def _slow_layout(buf: bytes, path: str, delimiter: str, quoting: _Quoting, has_header: bool,
                 bad_lines: np.ndarray, encoding: str) -> _Layout:
  """Python's csv module, for quoting the byte scan cannot follow. A per-row loop."""
  text = buf.decode(encoding, errors="surrogateescape")
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
  surrogate = re.compile("[\udc80-\udcff]")
  rows, lines, undecodable = [], [], []
  while True:
    start = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      if "field limit" in str(e):
        raise DataError(f"a value is longer than {_MAX_FIELD_CHARS:,} characters (an "
                        f"unbalanced quote?)", path=path, line=start) from None
      raise DataError(f"malformed quoting: {e}", path=path, line=start) from None
    if not row:   # blank line
      continue
    rows.append(row)
    lines.append(start)
    undecodable.append(bool(bad_lines.size) and any(surrogate.search(v) for v in row))
  header, header_line = None, 0
  if has_header:
    if not rows:
      raise DataError("the file is empty; expected a header row", path=path, line=1)
    header, header_line = rows.pop(0), lines.pop(0)
    if undecodable.pop(0):
      raise DataError(f"the header row is not valid {encoding.upper()}", path=path,
                      line=header_line)

  def parse(keep: np.ndarray, width: int, typed=None) -> list[np.ndarray]:
    del typed   # always str: this path is for files the fast one cannot follow
    kept = [row for row, k in zip(rows, keep) if k]
    columns = [np.empty(len(kept), dtype=object) for _ in range(width)]
    for j in range(width):
      columns[j][:] = [row[j] for row in kept]
    return columns

  return _Layout(header, header_line, np.asarray(lines, np.int64),
                 np.asarray([len(r) for r in rows], np.int64),
                 np.asarray(undecodable, bool), parse,
                 multiline=np.asarray([any("\n" in v for v in r) for r in rows], bool))


# ----------------------------------------------------------------------------------------
# Tables.


def _column_names(header: list[str], path: str, line: int) -> tuple[list[str], dict[str, str]]:
  """Header fields -> names, plus the kinds declared by RecBole ``name:type`` headers."""
  names, declared = [], {}
  for i, raw in enumerate(header):
    name = raw.strip()
    base, sep, type_name = name.rpartition(":")
    if sep and base.strip() and type_name.strip().lower() in _RECBOLE_TYPES:
      name = base.strip()
      declared[name] = _RECBOLE_TYPES[type_name.strip().lower()]
    if not name:
      raise DataError(f"header column {i + 1} has no name (header: {header})", path=path,
                      line=line)
    if name in names:
      raise DataError(f"column '{name}' appears twice in the header", path=path,
                      line=line, field=name)
    names.append(name)
  return names, declared


def _infer_kind(values: np.ndarray) -> str:
  nonempty = values[values != ""]
  if not len(nonempty):
    return types.TOKEN
  multi = pd.Series(nonempty, dtype=object).str.contains(_MULTI_VALUE_PATTERN, regex=True)
  return types.TOKEN_SEQ if multi.mean() >= _MULTI_VALUE_FRACTION else types.TOKEN


def _printable(delimiter: str) -> str:
  return "\\t" if delimiter == "\t" else delimiter


def _strip(values: np.ndarray) -> np.ndarray:
  return pd.Series(values, dtype=object).str.strip().to_numpy(dtype=object)


def _records(layout: _Layout, path: str, names: list[str], *, has_header: bool,
             delimiter: str, encoding: str, allow_bad_rows: bool, skips: _Skips,
             typed: Optional[dict[str, str]] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Drops (or reports) undecodable and ragged records; parses the rest into columns."""
  width, lines = len(names), layout.lines
  keep = _fail_or_skip(layout.undecodable, lines, allow_bad_rows=allow_bad_rows,
                       skips=skips, reason="not valid " + encoding.upper(),
                       error=lambda i: DataError(f"not valid {encoding.upper()}", path=path,
                                                 line=int(lines[i])))
  ragged = keep & (layout.num_fields != width)
  if ragged.any() and not layout.trusted:
    raise _LayoutMismatch()
  source = "the header" if has_header else "the file format"

  def ragged_error(i: int) -> DataError:
    n = int(layout.num_fields[i])
    hint = (f"a value contains an unquoted '{_printable(delimiter)}'" if n > width else
            "a value is missing")
    if layout.multiline is not None and layout.multiline[i]:
      hint = "a quoted value runs on past the end of its line (a missing closing quote?)"
    return DataError(f"expected {width} fields (as in {source}: {names}) but found {n}; "
                     f"{hint}", path=path, line=int(lines[i]))

  keep &= _fail_or_skip(ragged, lines, allow_bad_rows=allow_bad_rows, skips=skips,
                        reason="with the wrong number of fields", error=ragged_error)
  if not keep.any():
    return lines[keep], {name: np.zeros(0, dtype=object) for name in names}
  # Typed columns only where no value can exceed the length limit, which is checked on str.
  by_position = ({names.index(n): kind for n, kind in typed.items() if n in names}
                 if typed and layout.longest <= _MAX_FIELD_CHARS else None)
  try:
    raw = layout.parse(keep, width, by_position)
  except pd.errors.ParserError as e:
    if layout.trusted:
      raise DataError(f"cannot parse: {e}", path=path) from None
    raise _LayoutMismatch() from None
  if not layout.clean:   # int64 columns need none: int() ignores the same spaces
    raw = [col if col.dtype == np.int64 else _strip(col) for col in raw]
  return lines[keep], dict(zip(names, raw))


def _empty_value_error(path: str, lines: np.ndarray, name: str, i: int) -> DataError:
  return DataError("empty value in a required column", path=path, line=int(lines[i]),
                   field=name)


def _read(path: str, *, required: Sequence[str] = (), key: Optional[str] = None,
          allow_bad_rows: bool = False, skips: _Skips,
          names: Optional[Sequence[str]] = None, delimiter: Optional[str] = None,
          encoding: str = "utf-8", quoting: _Quoting = csv.QUOTE_MINIMAL,
          infer_kinds: bool = True,
          typed: Optional[dict[str, str]] = None) -> types.Table:
  """``read_table`` without the logging, for headerless files too (``names`` given).

  ``typed`` (column -> _INTEGER, _CATEGORICAL or _INTEGER_TEXT) lets the fast parser hand
  those columns back as int64 arrays, ``pd.Categorical`` or str built without a Python
  object per field (see _fast_layout), for callers that convert them anyway; other
  columns, and every column of the fallback parser, are str.
  """
  path = os.fspath(path)
  buf = _read_bytes(path)
  required = list(dict.fromkeys([*required, *([key] if key else [])]))
  if not buf or buf.isspace():   # no stripped copy of the whole file
    expected = ("data rows" if names is not None else
                f"a header row naming the columns, e.g. {','.join(required or ['id'])}")
    raise DataError(f"the file is empty; expected {expected}", path=path, line=1)
  delimiter = delimiter or _delimiter_for(path, buf)
  has_header = names is None
  bad_lines = _undecodable_lines(buf, path, encoding, allow_bad_rows)
  args = (buf, path, delimiter, quoting, has_header, bad_lines, encoding)
  layout = _fast_layout(*args) or _slow_layout(*args)

  if layout.header is not None:
    names, declared = _column_names(layout.header, path, layout.header_line)
  else:
    assert names is not None   # a headerless file is read with the names given
    names, declared = list(names), {}
  missing = [c for c in required if c not in names]
  if missing:
    hint = ""
    if len(names) == 1:   # one column holding them all: the wrong delimiter?
      other = next((d for d in ";\t|," if d != delimiter and d in names[0]), None)
      if other:
        hint = (f"; the header looks '{_printable(other)}'-separated but this file is read "
                f"as '{_printable(delimiter)}'-separated (.csv: ',', .tsv: tab)")
    raise DataError(f"missing required column(s) {missing}; the header has {names}{hint}",
                    path=path, line=layout.header_line or 1, field=missing[0])
  if not len(layout.lines):
    raise DataError("the file has a header row but no data rows", path=path,
                    line=layout.header_line + 1)

  kwargs: dict[str, Any] = dict(has_header=has_header, delimiter=delimiter,
                                encoding=encoding, allow_bad_rows=allow_bad_rows)
  attempt = _Skips()
  try:
    lines, columns = _records(layout, path, names, skips=attempt, typed=typed, **kwargs)
  except _LayoutMismatch:
    attempt = _Skips()
    layout = _slow_layout(*args)
    lines, columns = _records(layout, path, names, skips=attempt, **kwargs)
  skips.merge(attempt)

  # Values that are present but unusable.
  def drop(bad: np.ndarray, reason: str, error: Callable[[int], DataError]) -> None:
    nonlocal lines, columns
    if bad.any():
      ok = _fail_or_skip(bad, lines, allow_bad_rows=allow_bad_rows, skips=skips,
                         reason=reason, error=error)
      columns = {n: c[ok] for n, c in columns.items()}
      lines = lines[ok]

  if layout.longest > _MAX_FIELD_CHARS:   # rare, so only then measure every value
    lengths = {n: pd.Series(c, dtype=object).str.len().to_numpy() for n, c in columns.items()}

    def long_error(i: int) -> DataError:
      name = next(n for n in names if lengths[n][i] > _MAX_FIELD_CHARS)
      return DataError(f"value is {lengths[name][i]:,} characters long, over the limit of "
                       f"{_MAX_FIELD_CHARS:,} (a lost line break or quote?)", path=path,
                       line=int(lines[i]), field=name)

    drop(np.any([n > _MAX_FIELD_CHARS for n in lengths.values()], axis=0),
         f"with a value over {_MAX_FIELD_CHARS:,} characters", long_error)
  for name in required:
    if columns[name].dtype == np.int64:
      continue   # parsed as integers, so none was empty
    drop(columns[name] == "", f"with an empty {name}",
         functools.partial(_empty_value_error, path, lines, name))
  if key:
    values = columns[key]

    def duplicate_error(i: int) -> DataError:
      first = int(lines[np.flatnonzero(values == values[i])[0]])
      return DataError(f"duplicate {key} {values[i]!r}: already on line {first} "
                       f"(each {key} must appear once)", path=path, line=int(lines[i]),
                       field=key)

    drop(pd.Series(values, dtype=object).duplicated(keep="first").to_numpy(),
         f"with a duplicate {key}", duplicate_error)
  if not len(lines):
    raise DataError(f"no usable data rows: all {skips.total} were bad", path=path,
                    line=int(layout.lines[0]))

  kinds = {}
  for name in names:
    if name in required:
      kinds[name] = types.TOKEN
    elif name in declared:
      kinds[name] = declared[name]
    else:
      kinds[name] = _infer_kind(columns[name]) if infer_kinds else types.TOKEN
  return types.Table(path=path, columns=columns, kinds=kinds,
                     line_numbers=np.asarray(lines, np.int64), skipped=skips.total)


def read_table(path: str, *, required: Sequence[str] = (), key: Optional[str] = None,
               allow_bad_rows: bool = False) -> types.Table:
  """Reads a CSV/TSV file with a header row into raw string columns.

  Args:
    path: the file. Tab separated for .tsv and RecBole's .inter/.user/.item, comma
      separated for .csv, otherwise whichever of the two the header line uses.
    required: columns that must exist and be non-empty in every row.
    key: a column whose values must be unique (implies required).
    allow_bad_rows: skip and count bad rows instead of raising.

  Returns:
    The table; ``skipped`` counts the rows dropped under ``allow_bad_rows``.

  Raises:
    DataError: naming the file, line and field of the first problem.
  """
  skips = _Skips()
  table = _read(path, required=required, key=key, allow_bad_rows=allow_bad_rows,
                skips=skips)
  skips.log(table.path)
  return table


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


def _interactions_from_table(table: types.Table, *, allow_bad_rows: bool,
                             skips: _Skips) -> types.Interactions:
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

  ok = _fail_or_skip(bad, lines, allow_bad_rows=allow_bad_rows, skips=skips,
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
_INTERACTION_TYPES = {"timestamp": _INTEGER, "user_id": _INTEGER_TEXT,
                      "item_id": _INTEGER_TEXT, **{c: _CATEGORICAL for c in LABEL_COLUMNS}}


def read_interactions(path: str, *, allow_bad_rows: bool = False) -> types.Interactions:
  """Reads an interaction log: user_id, item_id, timestamp and optional rating or label.

  Timestamps are seconds since the epoch (floats are truncated) or ISO-8601 dates and
  datetimes (UTC unless they carry an offset), from 1970 to 2262-04-11: later ones are
  rejected, as they are usually milliseconds. ``label`` wins over ``rating``.

  Raises:
    DataError: naming the file, line and field of the first problem.
  """
  def read(typed):
    skips = _Skips()
    table = _read(path, required=INTERACTION_COLUMNS, allow_bad_rows=allow_bad_rows,
                  skips=skips, infer_kinds=False, typed=typed)
    return table, skips, _interactions_from_table(table, allow_bad_rows=allow_bad_rows,
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


def _warn_missing_features(interactions: types.Interactions,
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
        ", ".join(repr(x) for x in absent[:_SHOW_LINES]))


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
  _warn_missing_features(inter, users, "user_id")
  _warn_missing_features(inter, items, "item_id")
  if name is None:
    name = os.path.splitext(os.path.basename(os.fspath(interactions)))[0]
  return types.RawDataset(name=name, interactions=inter, user_features=users,
                          item_features=items)


# ----------------------------------------------------------------------------------------
# The original GroupLens MovieLens-100K files (u.data, u.user, u.item).

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                 "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
                 "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_ML100K_ITEM_COLUMNS = ("item_id", "movie_title", "release_date", "video_release_date",
                        "IMDb_URL") + ML100K_GENRES
_TRAILING_YEAR = r"\s*\(\d{4}(?:/[IVX]+)?\)\s*$"   # "Toy Story (1995)", "Hamlet (1996/I)"


def read_movielens_original(directory: str) -> types.RawDataset:
  """Reads GroupLens' ML-100K files with the columns and kinds of RecBole's atomic files.

  users: user_id, age, gender, occupation, zip_code; items: item_id, movie_title (title
  words, year removed), release_year, class (genre names), so that models trained on
  either copy see the same features.
  """
  directory = os.fspath(directory)
  plain: dict[str, Any] = dict(quoting=csv.QUOTE_NONE, infer_kinds=False)
  skips = _Skips()
  data = _read(os.path.join(directory, "u.data"), skips=skips, delimiter="\t",
               names=("user_id", "item_id", "rating", "timestamp"),
               required=("user_id", "item_id", "rating", "timestamp"), **plain)
  inter = _interactions_from_table(data, allow_bad_rows=False, skips=skips)

  user_columns = ("user_id", "age", "gender", "occupation", "zip_code")
  users = _read(os.path.join(directory, "u.user"), skips=_Skips(), delimiter="|",
                names=user_columns, key="user_id", **plain)
  users.kinds = {c: types.TOKEN for c in user_columns}

  raw = _read(os.path.join(directory, "u.item"), skips=_Skips(), delimiter="|",
              names=_ML100K_ITEM_COLUMNS, key="item_id", encoding="latin-1", **plain)
  columns = raw.columns
  title = (pd.Series(columns["movie_title"], dtype=object)
           .str.replace(_TRAILING_YEAR, "", regex=True).str.strip())
  year = (pd.Series(columns["release_date"], dtype=object)
          .str.extract(r"(\d{4})\s*$", expand=False).fillna(""))
  genres = np.full(len(raw), "", dtype=object)
  for genre in ML100K_GENRES:
    flag = columns[genre]
    bad = (flag != "0") & (flag != "1")
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise DataError(f"genre flag {flag[i]!r} must be 0 or 1", path=raw.path,
                      line=int(raw.line_numbers[i]), field=genre)
    genres = np.where(flag == "1", genres + " " + genre, genres)
  items = types.Table(
      path=raw.path,
      columns={"item_id": columns["item_id"],
               "movie_title": title.to_numpy(dtype=object),
               "release_year": year.to_numpy(dtype=object),
               "class": _strip(genres)},
      kinds={"item_id": types.TOKEN, "movie_title": types.TOKEN_SEQ,
             "release_year": types.TOKEN, "class": types.TOKEN_SEQ},
      line_numbers=raw.line_numbers, skipped=raw.skipped)
  _warn_missing_features(inter, users, "user_id")
  _warn_missing_features(inter, items, "item_id")
  return types.RawDataset(name="movielens-100k", interactions=inter, user_features=users,
                          item_features=items)
