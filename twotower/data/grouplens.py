"""The original GroupLens MovieLens-100K files (u.data, u.user, u.item), read with the
columns and kinds of RecBole's atomic files.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np
import pandas as pd

from twotower.data import types
from twotower.data.readers import interactions_from_table, warn_missing_features
from twotower.data.skips import Skips
from twotower.data.tables import read_file, strip_values
from twotower.data.types import DataError

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
  skips = Skips()
  data = read_file(os.path.join(directory, "u.data"), skips=skips, delimiter="\t",
               names=("user_id", "item_id", "rating", "timestamp"),
               required=("user_id", "item_id", "rating", "timestamp"), **plain)
  inter = interactions_from_table(data, allow_bad_rows=False, skips=skips)

  user_columns = ("user_id", "age", "gender", "occupation", "zip_code")
  users = read_file(os.path.join(directory, "u.user"), skips=Skips(), delimiter="|",
                names=user_columns, key="user_id", **plain)
  users.kinds = {c: types.TOKEN for c in user_columns}

  raw = read_file(os.path.join(directory, "u.item"), skips=Skips(), delimiter="|",
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
               "class": strip_values(genres)},
      kinds={"item_id": types.TOKEN, "movie_title": types.TOKEN_SEQ,
             "release_year": types.TOKEN, "class": types.TOKEN_SEQ},
      line_numbers=raw.line_numbers, skipped=raw.skipped)
  warn_missing_features(inter, users, "user_id")
  warn_missing_features(inter, items, "item_id")
  return types.RawDataset(name="movielens-100k", interactions=inter, user_features=users,
                          item_features=items)
