"""A delimited file (CSV, TSV or RecBole atomic) as a ``types.Table``: header names and
RecBole types, per-column kinds (token or multi-valued), values from pandas' C parser laid
over the byte scan's records, and located errors for bad rows.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from twotower.data import types
from twotower.data.scan import (
  MAX_FIELD_CHARS,
  Layout,
  LayoutMismatch,
  Quoting,
  delimiter_for,
  fast_layout,
  read_bytes,
  slow_layout,
  undecodable_lines,
)
from twotower.data.skips import Skips, fail_or_skip
from twotower.data.types import DataError

_RECBOLE_TYPES = {"token": types.TOKEN, "token_seq": types.TOKEN_SEQ,
                  "float": types.TOKEN, "float_seq": types.TOKEN_SEQ}
# An untyped column is multi-valued when this share of its non-empty values has a separator.
_MULTI_VALUE_FRACTION = 0.05
_MULTI_VALUE_PATTERN = r"[ |]"

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


def strip_values(values: np.ndarray) -> np.ndarray:
  return pd.Series(values, dtype=object).str.strip().to_numpy(dtype=object)


def _records(layout: Layout, path: str, names: list[str], *, has_header: bool,
             delimiter: str, encoding: str, allow_bad_rows: bool, skips: Skips,
             typed: Optional[dict[str, str]] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Drops (or reports) undecodable and ragged records; parses the rest into columns."""
  width, lines = len(names), layout.lines
  keep = fail_or_skip(layout.undecodable, lines, allow_bad_rows=allow_bad_rows,
                       skips=skips, reason="not valid " + encoding.upper(),
                       error=lambda i: DataError(f"not valid {encoding.upper()}", path=path,
                                                 line=int(lines[i])))
  ragged = keep & (layout.num_fields != width)
  if ragged.any() and not layout.trusted:
    raise LayoutMismatch()
  source = "the header" if has_header else "the file format"

  def ragged_error(i: int) -> DataError:
    n = int(layout.num_fields[i])
    hint = (f"a value contains an unquoted '{_printable(delimiter)}'" if n > width else
            "a value is missing")
    if layout.multiline is not None and layout.multiline[i]:
      hint = "a quoted value runs on past the end of its line (a missing closing quote?)"
    return DataError(f"expected {width} fields (as in {source}: {names}) but found {n}; "
                     f"{hint}", path=path, line=int(lines[i]))

  keep &= fail_or_skip(ragged, lines, allow_bad_rows=allow_bad_rows, skips=skips,
                        reason="with the wrong number of fields", error=ragged_error)
  if not keep.any():
    return lines[keep], {name: np.zeros(0, dtype=object) for name in names}
  # Typed columns only where no value can exceed the length limit, which is checked on str.
  by_position = ({names.index(n): kind for n, kind in typed.items() if n in names}
                 if typed and layout.longest <= MAX_FIELD_CHARS else None)
  try:
    raw = layout.parse(keep, width, by_position)
  except pd.errors.ParserError as e:
    if layout.trusted:
      raise DataError(f"cannot parse: {e}", path=path) from None
    raise LayoutMismatch() from None
  if not layout.clean:   # int64 columns need none: int() ignores the same spaces
    raw = [col if col.dtype == np.int64 else strip_values(col) for col in raw]
  return lines[keep], dict(zip(names, raw))


def _empty_value_error(path: str, lines: np.ndarray, name: str, i: int) -> DataError:
  return DataError("empty value in a required column", path=path, line=int(lines[i]),
                   field=name)


def read_file(path: str, *, required: Sequence[str] = (), key: Optional[str] = None,
          allow_bad_rows: bool = False, skips: Skips,
          names: Optional[Sequence[str]] = None, delimiter: Optional[str] = None,
          encoding: str = "utf-8", quoting: Quoting = csv.QUOTE_MINIMAL,
          infer_kinds: bool = True,
          typed: Optional[dict[str, str]] = None) -> types.Table:
  """``read_table`` without the logging, for headerless files too (``names`` given).

  ``typed`` (column -> INTEGER, CATEGORICAL or INTEGER_TEXT) lets the fast parser hand
  those columns back as int64 arrays, ``pd.Categorical`` or str built without a Python
  object per field (see fast_layout), for callers that convert them anyway; other
  columns, and every column of the fallback parser, are str.
  """
  path = os.fspath(path)
  buf = read_bytes(path)
  required = list(dict.fromkeys([*required, *([key] if key else [])]))
  if not buf or buf.isspace():   # no stripped copy of the whole file
    expected = ("data rows" if names is not None else
                f"a header row naming the columns, e.g. {','.join(required or ['id'])}")
    raise DataError(f"the file is empty; expected {expected}", path=path, line=1)
  delimiter = delimiter or delimiter_for(path, buf)
  has_header = names is None
  bad_lines = undecodable_lines(buf, path, encoding, allow_bad_rows)
  args = (buf, path, delimiter, quoting, has_header, bad_lines, encoding)
  layout = fast_layout(*args) or slow_layout(*args)

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
  attempt = Skips()
  try:
    lines, columns = _records(layout, path, names, skips=attempt, typed=typed, **kwargs)
  except LayoutMismatch:
    attempt = Skips()
    layout = slow_layout(*args)
    lines, columns = _records(layout, path, names, skips=attempt, **kwargs)
  skips.merge(attempt)

  # Values that are present but unusable.
  def drop(bad: np.ndarray, reason: str, error: Callable[[int], DataError]) -> None:
    nonlocal lines, columns
    if bad.any():
      ok = fail_or_skip(bad, lines, allow_bad_rows=allow_bad_rows, skips=skips,
                         reason=reason, error=error)
      columns = {n: c[ok] for n, c in columns.items()}
      lines = lines[ok]

  if layout.longest > MAX_FIELD_CHARS:   # rare, so only then measure every value
    lengths = {n: pd.Series(c, dtype=object).str.len().to_numpy() for n, c in columns.items()}

    def long_error(i: int) -> DataError:
      name = next(n for n in names if lengths[n][i] > MAX_FIELD_CHARS)
      return DataError(f"value is {lengths[name][i]:,} characters long, over the limit of "
                       f"{MAX_FIELD_CHARS:,} (a lost line break or quote?)", path=path,
                       line=int(lines[i]), field=name)

    drop(np.any([n > MAX_FIELD_CHARS for n in lengths.values()], axis=0),
         f"with a value over {MAX_FIELD_CHARS:,} characters", long_error)
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
  skips = Skips()
  table = read_file(path, required=required, key=key, allow_bad_rows=allow_bad_rows,
                skips=skips)
  skips.log(table.path)
  return table
