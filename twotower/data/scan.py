"""Where the records of a delimited text file are: record boundaries, field counts, physical
line numbers and undecodable lines, from numpy over the raw bytes.

Reading is vectorised so that multi-million-row logs take seconds; Python's ``csv`` module
is the fallback layout (``slow_layout``) for quoting that the byte scan cannot follow (a
stray quote in the middle of a field). Also: the file's delimiter, and text that is not
UTF-8 (UTF-16/32, compressed files) named as such.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import io
import os
import re
import warnings
from typing import Callable, Literal, Optional

import numpy as np
import pandas as pd

from twotower.data.types import DataError

# RecBole atomic files are tab separated whatever their suffix says.
_TAB_SUFFIXES = (".tsv", ".inter", ".user", ".item")
# Longest value accepted: the csv module's default field_size_limit, so that the fast and
# the fallback parser agree. Longer values are a lost line break or quote, not an id.
MAX_FIELD_CHARS = 131_072

Quoting = Literal[0, 1, 2, 3]   # csv.QUOTE_MINIMAL, _ALL, _NONNUMERIC, _NONE

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
# Layout: where the records are, how many fields each has, which lines cannot be decoded.


@dataclasses.dataclass
class Layout:
  """The shape of a delimited file before its values are parsed."""
  header: Optional[list[str]]   # header fields, None for headerless files
  header_line: int              # 1-based; 0 for headerless files
  lines: np.ndarray             # 1-based physical start line of each non-blank data record
  num_fields: np.ndarray        # fields per data record
  undecodable: np.ndarray       # bool per data record
  # (keep mask, width, typed) -> columns; see fast_layout's parse for ``typed``.
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


def read_bytes(path: str) -> bytes:
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


def delimiter_for(path: str, buf: bytes) -> str:
  lower = path.lower()
  if lower.endswith(_TAB_SUFFIXES):
    return "\t"
  if lower.endswith(".csv"):
    return ","
  first_line = buf.split(b"\n", 1)[0]
  return "\t" if b"\t" in first_line else ","


def undecodable_lines(buf: bytes, path: str, encoding: str,
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


def fast_layout(buf: bytes, path: str, delimiter: str, quoting: Quoting, has_header: bool,
                 bad_lines: np.ndarray, encoding: str) -> Optional[Layout]:
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
      raise LayoutMismatch()
    return frame

  def parse(keep: np.ndarray, width: int, typed: Optional[dict[int, str]] = None) -> list:
    """Columns as object arrays of str, except where ``typed`` asks otherwise.

    ``typed[i] == INTEGER``: int64 when every value is a plain integer (pandas' own
    integer parser, as exact as ``int``), else str. ``typed[i] == CATEGORICAL``: a
    ``pd.Categorical`` of the str values, for columns with few distinct values.
    ``typed[i] == INTEGER_TEXT``: str, but parsed as integers and each distinct one
    formatted once when every field is exactly its integer's decimal text (ids such as
    ``123``; ``007`` or ``+5`` are not, and take the str parse). All three skip pandas'
    building a Python object per value; a column that does not fit its type is read again
    as str, alone.
    """
    if typed:
      dtype = {i: (str if i not in typed else
                   "category" if typed[i] == CATEGORICAL else None) for i in range(width)}
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
      except (ValueError, TypeError, OverflowError, LayoutMismatch):
        pass   # the str parse below fails (or not) exactly as without ``typed``
    frame = read(keep, width, str)
    return [frame[i].to_numpy(dtype=object) for i in range(width)]

  longest = int((content_end[nonblank] - starts).max(initial=0))
  return Layout(header, header_line, lines, num_fields[nonblank],
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


class LayoutMismatch(Exception):
  """The byte scan and pandas disagree about the records: use the csv module instead."""


# Column types ``read_file`` may be asked for (``typed``), instead of str.
INTEGER, CATEGORICAL, INTEGER_TEXT = "integer", "categorical", "integer_text"
# 10**1 .. 10**19: the decimal digits of a magnitude m are searchsorted(m) + 1.
_POWERS_OF_TEN = 10 ** np.arange(1, 20, dtype=np.uint64)


def _typed_column(series: pd.Series, kind: Optional[str], field_lengths: Callable[[], int]):
  """A column of the typed parse as asked for, or None when only str will do."""
  if kind is None:
    return series.to_numpy(dtype=object)   # read as str
  if kind == CATEGORICAL:
    return series.array if isinstance(series.array, pd.Categorical) else None
  values = series.to_numpy()
  if kind == INTEGER and values.dtype == np.int64:
    return values
  if kind == INTEGER_TEXT and values.dtype == np.int64:
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


def slow_layout(buf: bytes, path: str, delimiter: str, quoting: Quoting, has_header: bool,
                 bad_lines: np.ndarray, encoding: str) -> Layout:
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
        raise DataError(f"a value is longer than {MAX_FIELD_CHARS:,} characters (an "
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

  return Layout(header, header_line, np.asarray(lines, np.int64),
                 np.asarray([len(r) for r in rows], np.int64),
                 np.asarray(undecodable, bool), parse,
                 multiline=np.asarray([any("\n" in v for v in r) for r in rows], bool))
