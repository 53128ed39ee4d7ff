"""The in-memory shapes that data readers produce and everything downstream consumes.

Columns are numpy arrays of raw strings (``dtype=object``) exactly as they appear in the
input files; parsing to ids happens once, in ``twotower.data.vocab``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from twotower.errors import UserError


class DataError(UserError, ValueError):
  """Bad input data, located by file, line and field so that a user can fix it."""

  def __init__(self, message: str, *, path: Optional[str] = None,
               line: Optional[int] = None, field: Optional[str] = None):
    self.path, self.line, self.field, self.reason = path, line, field, message
    where = str(path) if path else "<input>"
    if line is not None:
      where += f":{line}"
    if field:
      where += f": field '{field}'"
    super().__init__(f"{where}: {message}")


# Feature column kinds. ``token`` is one categorical value; ``token_seq`` holds several
# tokens separated by spaces or '|' (RecBole's ``token_seq``; genres, title words).
TOKEN = "token"
TOKEN_SEQ = "token_seq"
# Free text named by --text_features (titles, descriptions): tokenised by twotower.data.text
# and encoded by the towers' text encoder.
TEXT = "text"


@dataclasses.dataclass
class Table:
  """A feature table: raw string columns plus where each row came from."""
  path: str
  columns: dict[str, np.ndarray]          # name -> object array of str
  kinds: dict[str, str]                   # name -> TOKEN | TOKEN_SEQ | TEXT
  line_numbers: np.ndarray                # 1-based line of each row in `path`
  skipped: int = 0                        # bad rows skipped under allow_bad_rows

  def __len__(self) -> int:
    return len(self.line_numbers)


@dataclasses.dataclass
class Interactions:
  """One row per (user, item, time) event."""
  path: str
  user_id: np.ndarray                     # object array of str
  item_id: np.ndarray                     # object array of str
  timestamp: np.ndarray                   # int64 seconds
  label: Optional[np.ndarray] = None      # float32 rating or label, if the file has one
  line_numbers: Optional[np.ndarray] = None
  skipped: int = 0

  def __len__(self) -> int:
    return len(self.user_id)


@dataclasses.dataclass
class RawDataset:
  """Interactions plus optional side-feature tables keyed by user_id / item_id."""
  name: str
  interactions: Interactions
  user_features: Optional[Table] = None
  item_features: Optional[Table] = None
