"""Tests for twotower.data.readers: every bad input is reported by file, line and field."""
from __future__ import annotations

import logging
import pathlib
from typing import Optional, Union

import numpy as np
import pytest

from twotower.data import grouplens, readers, types
from twotower.data.types import DataError


def _write(tmp_path: pathlib.Path, name: str, content: Union[str, bytes]) -> str:
  path = tmp_path / name
  path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
  return str(path)


def _assert_located(error: DataError, path: str, line: Optional[int],
                    field: Optional[str] = None) -> None:
  """The message itself (not just the attributes) must tell the user where to look."""
  message = str(error)
  assert error.path == path
  assert error.line == line
  assert error.field == field
  expected = path if line is None else f"{path}:{line}"
  assert message.startswith(expected), message
  if field:
    assert f"'{field}'" in message, message


GOOD = "user_id,item_id,timestamp,rating\n1,10,100,4\n2,20,200,5\n1,20,300,3\n"


# ----------------------------------------------------------------------------------------
# One test per kind of bad input.


def test_missing_file(tmp_path):
  path = str(tmp_path / "nope.csv")
  with pytest.raises(DataError, match="not found") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, None)


def test_missing_required_column(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,time\n1,10,100\n")
  with pytest.raises(DataError, match="missing required column") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 1, "timestamp")
  assert "['user_id', 'item_id', 'time']" in str(e.value)   # lists what was found


def test_unparsable_timestamp(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,10,100\n2,20,yesterday\n")
  with pytest.raises(DataError, match="'yesterday' cannot be parsed") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "timestamp")


def test_negative_timestamp(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,10,100\n2,20,-5\n")
  with pytest.raises(DataError, match="negative") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "timestamp")


def test_infinite_timestamp(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,10,1.5\n2,20,inf\n")
  with pytest.raises(DataError, match="not finite") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "timestamp")


def test_empty_file(tmp_path):
  path = _write(tmp_path, "i.csv", "")
  with pytest.raises(DataError, match="empty.*header") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 1)


def test_whitespace_only_file_is_empty(tmp_path):
  path = _write(tmp_path, "i.csv", "\n  \n")
  with pytest.raises(DataError, match="empty"):
    readers.read_table(path)


def test_header_only_file(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n")
  with pytest.raises(DataError, match="no data rows") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 2)


def test_non_utf8_bytes(tmp_path):
  path = _write(tmp_path, "i.csv",
                b"user_id,item_id,timestamp\n1,10,100\n2,caf\xe9,200\n3,30,300\n")
  with pytest.raises(DataError, match=r"not valid UTF-8: byte 0xe9 at column 6") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3)


def test_ragged_row_too_many_fields(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,10,100\n2,20,200,9\n")
  with pytest.raises(DataError, match="expected 3 fields .* but found 4") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3)


def test_ragged_row_too_few_fields(tmp_path):
  path = _write(tmp_path, "i.tsv",
                "user_id\titem_id\ttimestamp\n1\t10\t100\n2\t20\t200\n3\t30\n")
  with pytest.raises(DataError, match="expected 3 fields .* but found 2") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 4)


def test_ragged_row_in_quoted_csv(tmp_path):
  # Quotes switch the reader to the quote-aware scan; line numbers still count physically.
  path = _write(tmp_path, "items.csv",
                'item_id,title\n1,"Heat, the\nmovie"\n2,"Up"\n3,Cars,extra\n')
  with pytest.raises(DataError, match="found 3") as e:
    readers.read_features(path, "item_id")
  _assert_located(e.value, path, 5)


def test_duplicate_feature_rows(tmp_path):
  path = _write(tmp_path, "items.csv", "item_id,genre\n7,Drama\n8,Comedy\n7,Action\n")
  with pytest.raises(DataError, match="duplicate item_id '7': already on line 2") as e:
    readers.read_features(path, "item_id")
  _assert_located(e.value, path, 4, "item_id")


def test_empty_required_field(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,10,100\n ,20,200\n")
  with pytest.raises(DataError, match="empty value") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "user_id")


def test_nan_rating(tmp_path):
  path = _write(tmp_path, "i.csv", GOOD + "3,30,400,nan\n")
  with pytest.raises(DataError, match="'nan' is not a finite number") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 5, "rating")


@pytest.mark.parametrize("value, match", [("", "is empty"), ("good", "not a finite"),
                                          ("-inf", "not a finite")])
def test_bad_label(tmp_path, value, match):
  path = _write(tmp_path, "i.csv",
                f"user_id,item_id,timestamp,label\n1,10,100,1\n2,20,200,{value}\n")
  with pytest.raises(DataError, match=match) as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "label")


def test_bad_header(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,user_id\n1,2,3\n")
  with pytest.raises(DataError, match="appears twice") as e:
    readers.read_table(path)
  _assert_located(e.value, path, 1, "user_id")


def test_error_lines_count_blank_lines_and_crlf(tmp_path):
  path = _write(tmp_path, "i.csv",
                "user_id,item_id,timestamp\r\n1,10,100\r\n\r\n\r\n2,20,oops\r\n")
  with pytest.raises(DataError) as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 5, "timestamp")


# ----------------------------------------------------------------------------------------
# allow_bad_rows: skipped and counted, never silently.


def test_allow_bad_rows_counts_every_kind(tmp_path, caplog):
  path = _write(tmp_path, "i.csv", (
      b"user_id,item_id,timestamp,rating\n"
      b"1,10,100,4\n"        # 2 good
      b"2,20,200,5,6\n"      # 3 too many fields
      b"3,30\n"              # 4 too few fields
      b"4,\xff,400,1\n"      # 5 not UTF-8
      b",50,500,1\n"         # 6 empty user_id
      b"6,60,later,1\n"      # 7 bad timestamp
      b"7,70,700,nan\n"      # 8 bad rating
      b"8,80,800,2\n"))      # 9 good
  with caplog.at_level(logging.WARNING):
    inter = readers.read_interactions(path, allow_bad_rows=True)
  assert inter.skipped == 6
  assert list(inter.user_id) == ["1", "8"]
  assert list(inter.line_numbers) == [2, 9]
  assert list(inter.timestamp) == [100, 800]
  np.testing.assert_array_equal(inter.label, np.array([4, 2], np.float32))
  warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(warnings) == 1, warnings   # logged once, with where to look
  assert "skipped 6 bad row(s)" in warnings[0]
  assert "3, 4, 5, 6, 7" in warnings[0]


def test_allow_bad_rows_duplicate_keys_keep_first(tmp_path):
  path = _write(tmp_path, "users.csv", "user_id,age\n1,20\n2,30\n1,40\n1,50\n")
  table = readers.read_features(path, "user_id", allow_bad_rows=True)
  assert table.skipped == 2
  assert list(table.columns["user_id"]) == ["1", "2"]
  assert list(table.columns["age"]) == ["20", "30"]
  assert list(table.line_numbers) == [2, 3]


def test_allow_bad_rows_with_every_row_bad_still_fails(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,2\n3,4\n")
  with pytest.raises(DataError, match="all 2"):
    readers.read_interactions(path, allow_bad_rows=True)


# ----------------------------------------------------------------------------------------
# Formats, kinds and values.


def test_csv_and_tsv_read_the_same(tmp_path):
  csv_path = _write(tmp_path, "i.csv", GOOD)
  tsv_path = _write(tmp_path, "i.tsv", GOOD.replace(",", "\t"))
  sniffed = _write(tmp_path, "i.txt", GOOD.replace(",", "\t"))
  results = [readers.read_interactions(p) for p in (csv_path, tsv_path, sniffed)]
  for inter in results:
    assert list(inter.user_id) == ["1", "2", "1"]
    assert list(inter.item_id) == ["10", "20", "20"]
    assert inter.timestamp.dtype == np.int64
    assert list(inter.timestamp) == [100, 200, 300]
    assert inter.label.dtype == np.float32
    assert list(inter.label) == [4, 5, 3]
    assert list(inter.line_numbers) == [2, 3, 4]
    assert inter.user_id.dtype == object and isinstance(inter.user_id[0], str)


def test_label_wins_over_rating_and_floats_truncate(tmp_path):
  path = _write(tmp_path, "i.csv",
                "user_id,item_id,timestamp,rating,label\n1,2,100.9,5,1\n1,3,1e3,4,0\n")
  inter = readers.read_interactions(path)
  assert list(inter.label) == [1, 0]
  assert list(inter.timestamp) == [100, 1000]


def test_no_label_column(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n1,2,3\n")
  assert readers.read_interactions(path).label is None


def test_iso_timestamps(tmp_path):
  path = _write(tmp_path, "i.csv", (
      "user_id,item_id,timestamp\n"
      "1,2,1970-01-02\n"
      "1,3,2020-01-31T12:00:00Z\n"
      "1,4,2020-01-31 14:00:00+02:00\n"
      "1,5,86400\n"))
  inter = readers.read_interactions(path)
  assert list(inter.timestamp) == [86400, 1580472000, 1580472000, 86400]


def test_recbole_header_kinds(tmp_path):
  path = _write(tmp_path, "ml.item", (
      "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
      "1\tToy Story\t1995\tAnimation Children's Comedy\n"
      "2\tGoldenEye\t1995\tAction\n"))
  table = readers.read_features(path, "item_id")
  assert list(table.columns) == ["item_id", "movie_title", "release_year", "class"]
  assert table.kinds == {"item_id": types.TOKEN, "movie_title": types.TOKEN_SEQ,
                         "release_year": types.TOKEN, "class": types.TOKEN_SEQ}
  assert table.columns["class"][0] == "Animation Children's Comedy"


def test_recbole_inter_with_float_timestamps(tmp_path):
  path = _write(tmp_path, "x.inter", ("user_id:token\titem_id:token\trating:float\t"
                                      "timestamp:float\n196\t242\t3\t881250949\n"))
  inter = readers.read_interactions(path)
  assert list(inter.timestamp) == [881250949]
  assert list(inter.label) == [3]


def test_multi_valued_detection(tmp_path):
  rows = [f"{i},Drama|Comedy,{'New York' if i == 0 else 'Paris'},{i} {i}" for i in range(40)]
  path = _write(tmp_path, "items.csv", "item_id,genres,city,tags\n" + "\n".join(rows))
  table = readers.read_features(path, "item_id")
  # genres: every value has '|'; city: 1 of 40 (2.5%) has a space; tags: all have spaces.
  assert table.kinds == {"item_id": types.TOKEN, "genres": types.TOKEN_SEQ,
                         "city": types.TOKEN, "tags": types.TOKEN_SEQ}


def test_key_and_required_columns_are_tokens(tmp_path):
  path = _write(tmp_path, "users.csv", "user_id,name\nann lee,x\nbob ray,y\n")
  table = readers.read_table(path, key="user_id")
  assert table.kinds["user_id"] == types.TOKEN


def test_values_are_stripped_and_quotes_understood(tmp_path):
  path = _write(tmp_path, "items.csv", (
      'item_id, title , genres\n'
      ' 1 ,"Heat, the movie", Crime \n'
      '2,"Say ""hi""\nagain",\n'
      '\n'
      '3,Up,Animation|Family\n'))
  table = readers.read_features(path, "item_id")
  assert list(table.columns) == ["item_id", "title", "genres"]
  assert list(table.columns["item_id"]) == ["1", "2", "3"]
  assert list(table.columns["title"]) == ["Heat, the movie", 'Say "hi"\nagain', "Up"]
  assert list(table.columns["genres"]) == ["Crime", "", "Animation|Family"]
  assert list(table.line_numbers) == [2, 3, 6]


def test_stray_quote_inside_a_field(tmp_path):
  # A quote in the middle of an unquoted field is literal (as in pandas and csv); the
  # quote-parity scan cannot know that, so the reader must fall back, not fail.
  path = _write(tmp_path, "users.tsv",
                'user_id\theight\n1\t5\'10"\n2\t6\'1"\n3\t6\'0"\n4\t5\'9"\n')
  table = readers.read_features(path, "user_id")
  assert list(table.columns["height"]) == ['5\'10"', '6\'1"', '6\'0"', '5\'9"']
  assert list(table.line_numbers) == [2, 3, 4, 5]


def test_unquoted_values_are_stripped(tmp_path):
  path = _write(tmp_path, "users.tsv",
                "user_id\tage\tcity\n 1\t20 \tZürich\n2\t30\t\u00a0Bern\u3000\n")
  table = readers.read_features(path, "user_id")
  assert list(table.columns["user_id"]) == ["1", "2"]
  assert list(table.columns["age"]) == ["20", "30"]
  assert list(table.columns["city"]) == ["Zürich", "Bern"]


def test_allow_bad_rows_in_quoted_files(tmp_path):
  path = _write(tmp_path, "items.csv", (
      b'item_id,title\n'
      b'1,"multi\nline \xff title"\n'     # lines 2-3, not UTF-8
      b'2,"fine, really"\n'                 # line 4
      b'3,"too",many\n'                     # line 5, ragged
      b'4,"ok"\n'))                         # line 6
  table = readers.read_features(path, "item_id", allow_bad_rows=True)
  assert table.skipped == 2
  assert list(table.columns["title"]) == ["fine, really", "ok"]
  assert list(table.line_numbers) == [4, 6]


def test_allow_bad_rows_with_stray_quotes(tmp_path):
  path = _write(tmp_path, "users.tsv",
                b'user_id\theight\n1\t5\'10"\n2\t\xff\n3\t6\'1"\t?\n4\t6\'0"\n')
  table = readers.read_features(path, "user_id", allow_bad_rows=True)
  assert table.skipped == 2
  assert list(table.columns["height"]) == ['5\'10"', '6\'0"']
  assert list(table.line_numbers) == [2, 5]


def test_utf8_bom_and_unicode_values(tmp_path):
  path = _write(tmp_path, "users.csv", "\ufeffuser_id,city\n1,Zürich\n")
  table = readers.read_features(path, "user_id")
  assert list(table.columns["city"]) == ["Zürich"]


def test_read_dataset_files_warns_about_ids_without_features(tmp_path, caplog):
  inter = _write(tmp_path, "log.csv", GOOD)
  users = _write(tmp_path, "users.csv", "user_id,age\n1,20\n9,30\n")
  items = _write(tmp_path, "items.tsv", "item_id\tgenre\n10\tDrama\n20\tComedy\n")
  with caplog.at_level(logging.WARNING):
    raw = readers.read_dataset_files(inter, users, items)
  assert raw.name == "log"
  assert len(raw.interactions) == 3
  assert list(raw.user_features.columns["user_id"]) == ["1", "9"]
  assert len(raw.item_features) == 2
  messages = [r.getMessage() for r in caplog.records]
  assert any("1 of 2 user_id values" in m and "'2'" in m for m in messages), messages
  assert not any("item_id values" in m for m in messages), messages


def test_read_dataset_files_without_features(tmp_path):
  raw = readers.read_dataset_files(_write(tmp_path, "log.csv", GOOD), name="mine")
  assert raw.name == "mine"
  assert raw.user_features is None and raw.item_features is None


def test_large_file_line_numbers(tmp_path):
  n = 20000
  lines = [f"{i % 97},{i % 31},{1000 + i}" for i in range(n)]
  lines[15000] = "1,2,x"
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n" + "\n".join(lines))
  with pytest.raises(DataError) as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 15002, "timestamp")


# The fast path parses timestamps as integers and labels as categories; whatever pandas'
# integer inference accepts beyond plain integers must read exactly as the str path would.
@pytest.mark.parametrize("value,seconds", [("+5", 5), (" 5", 5), ("007", 7), ("1.0", 1),
                                           ("1e3", 1000), ("1.9", 1), ('"12"', 12)])
def test_integer_like_timestamps(tmp_path, value, seconds):
  path = _write(tmp_path, "i.csv", f"user_id,item_id,timestamp,rating\n007,1,10,4\n"
                                   f"2,2,{value},3.5\n")
  inter = readers.read_interactions(path)
  assert list(inter.timestamp) == [10, seconds]
  assert list(inter.user_id) == ["007", "2"] and list(inter.label) == [4.0, 3.5]


@pytest.mark.parametrize("value,match", [
    ("True", "'True' cannot be parsed"),   # pandas' inference would read 1
    ("9223372036854775808", "'9223372036854775808' is after 2262"),   # pandas: a uint64
    ("-5", "'-5' is negative")])
def test_timestamps_pandas_would_accept(tmp_path, value, match):
  n = 300_000   # past the parser's first chunk, so the chunks disagree on the type
  lines = [f"{i % 97},{i % 31},{1000 + i},4" for i in range(n)]
  lines[n - 2] = f"1,2,{value},4"
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp,rating\n" + "\n".join(lines))
  with pytest.raises(DataError, match=match) as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, n, "timestamp")
  inter = readers.read_interactions(path, allow_bad_rows=True)
  assert inter.skipped == 1 and len(inter) == n - 1
  assert inter.line_numbers[-1] == n + 1


def test_iso_timestamps_after_integer_ones(tmp_path):
  n = 300_000
  lines = [f"{i % 97},{i % 31},{1000 + i},4" for i in range(n)]
  lines[-1] = "1,2,1970-01-02,4"
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp,rating\n" + "\n".join(lines))
  assert readers.read_interactions(path).timestamp[-1] == 86400


# Integer ids are parsed as integers and formatted back; only fields that are exactly their
# integer's text may take that path, so every id reads as written (stripped) either way.
@pytest.mark.parametrize("odd,want", [("007", "007"), ("+5", "+5"), (" 5", "5"), ("-0", "-0"),
                                      ("5.0", "5.0"), ('"12"', "12"), ("u7", "u7"),
                                      ("99999999999999999999", "99999999999999999999")])
@pytest.mark.parametrize("rows", [3, 300_000])   # the odd id in the parser's first chunk or not
def test_integer_ids_read_as_written(tmp_path, odd, want, rows):
  users = [str(u) for u in range(rows)]
  users[-2] = odd
  lines = [f"{u},{-r if r % 3 == 0 else r},{1000 + r}" for r, u in enumerate(users)]
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
  inter = readers.read_interactions(path)
  expected = [str(u) for u in range(rows)]
  expected[-2] = want
  assert all(type(u) is str for u in inter.user_id[-3:])
  assert list(inter.user_id) == expected
  assert list(inter.item_id) == [str(-r if r % 3 == 0 else r) for r in range(rows)]


def test_plain_integer_ids_at_int64_limits(tmp_path):
  ids = ["9223372036854775807", "-9223372036854775808", "0", "10", "99", "100", "-1"]
  lines = [f"{u},{u},{i}" for i, u in enumerate(ids)]
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\n" + "\n".join(lines))
  inter = readers.read_interactions(path)
  assert list(inter.user_id) == ids and list(inter.item_id) == ids


def test_categorical_labels_keep_their_text_in_errors(tmp_path):
  path = _write(tmp_path, "i.csv", "user_id,item_id,timestamp,label\n1,1,1,4\n2,2,2,1e400\n")
  with pytest.raises(DataError, match="label '1e400' is not a finite number") as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 3, "label")


# ----------------------------------------------------------------------------------------
# The original GroupLens files.


def _fake_ml100k(directory: pathlib.Path) -> None:
  directory.mkdir()
  (directory / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
                                    "22\t242\t1\t878887116\n")
  (directory / "u.user").write_text("196|49|M|writer|55105\n186|39|F|executive|00000\n"
                                    "22|25|M|writer|40206\n")
  flags = lambda on: "|".join("1" if g in on else "0" for g in grouplens.ML100K_GENRES)
  (directory / "u.item").write_bytes((
      f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|"
      f"{flags({'Comedy'})}\n"
      f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|"
      f"{flags({'Crime', 'Film-Noir', 'Mystery', 'Thriller'})}\n"
      f"543|Misérables, Les (1995)|01-Jan-1995||http://x|{flags({'Drama', 'Musical'})}\n"
      f"267|unknown||||{flags({'unknown'})}\n").encode("latin-1"))


def test_read_movielens_original(tmp_path):
  _fake_ml100k(tmp_path / "ml-100k")
  raw = grouplens.read_movielens_original(str(tmp_path / "ml-100k"))
  assert raw.name == "movielens-100k"
  inter = raw.interactions
  assert list(inter.user_id) == ["196", "186", "22"]
  assert list(inter.item_id) == ["242", "302", "242"]
  assert list(inter.timestamp) == [881250949, 891717742, 878887116]
  assert list(inter.label) == [3, 3, 1]
  assert list(inter.line_numbers) == [1, 2, 3]

  users = raw.user_features
  assert list(users.columns) == ["user_id", "age", "gender", "occupation", "zip_code"]
  assert set(users.kinds.values()) == {types.TOKEN}
  assert list(users.columns["zip_code"]) == ["55105", "00000", "40206"]

  items = raw.item_features
  assert list(items.columns) == ["item_id", "movie_title", "release_year", "class"]
  assert items.kinds == {"item_id": types.TOKEN, "movie_title": types.TOKEN_SEQ,
                         "release_year": types.TOKEN, "class": types.TOKEN_SEQ}
  assert list(items.columns["movie_title"]) == ["Kolya", "L.A. Confidential",
                                                "Misérables, Les", "unknown"]
  assert list(items.columns["release_year"]) == ["1997", "1997", "1995", ""]
  assert list(items.columns["class"]) == ["Comedy", "Crime Film-Noir Mystery Thriller",
                                          "Drama Musical", "unknown"]


def test_read_movielens_original_reports_bad_lines(tmp_path):
  _fake_ml100k(tmp_path / "ml-100k")
  data = tmp_path / "ml-100k" / "u.data"
  data.write_text(data.read_text() + "5\t6\tseven\t100\n")
  with pytest.raises(DataError) as e:
    grouplens.read_movielens_original(str(tmp_path / "ml-100k"))
  _assert_located(e.value, str(data), 4, "rating")


# ----------------------------------------------------------------------------------------
# Byte-order marks and Windows line endings are accepted; each malformed file is one
# located DataError (the jobs print it as one line: tests/test_cli_errors.py).

_LOG_ROWS = [("u1", "i1", "100", "4"), ("u2", "i2", "200", "5"), ("u1", "i3", "300", "3")]


def _log_text(delimiter: str, header: list) -> str:
  rows = [delimiter.join(header)] + [delimiter.join(r) for r in _LOG_ROWS]
  return "\n".join(rows) + "\n"


@pytest.mark.parametrize("name, delimiter, header", [
    ("log.csv", ",", ["user_id", "item_id", "timestamp", "rating"]),
    ("log.tsv", "\t", ["user_id", "item_id", "timestamp", "rating"]),
    ("log.inter", "\t", ["user_id:token", "item_id:token", "timestamp:float", "rating:float"]),
])
@pytest.mark.parametrize("bom, crlf", [(True, False), (False, True), (True, True)])
def test_bom_and_crlf_read_as_without(tmp_path, name, delimiter, header, bom, crlf):
  plain = _log_text(delimiter, header)
  variant = ("\ufeff" if bom else "") + (plain.replace("\n", "\r\n") if crlf else plain)
  (tmp_path / "a").mkdir()
  want = readers.read_interactions(_write(tmp_path / "a", name, plain))
  got = readers.read_interactions(_write(tmp_path, name, variant))
  for column in ("user_id", "item_id", "timestamp", "label", "line_numbers"):
    np.testing.assert_array_equal(getattr(got, column), getattr(want, column), column)


@pytest.mark.parametrize("name", ["items.csv", "items.item"])
def test_bom_and_crlf_feature_tables_read_as_without(tmp_path, name):
  header = "item_id,title\n" if name.endswith(".csv") else "item_id:token\ttitle:token_seq\n"
  sep = "," if name.endswith(".csv") else "\t"
  plain = header + f"i1{sep}Alien\ni2{sep}Heat Wave\n"
  (tmp_path / "a").mkdir()
  want = readers.read_features(_write(tmp_path / "a", name, plain), "item_id")
  got = readers.read_features(_write(tmp_path, name, "\ufeff" + plain.replace("\n", "\r\n")),
                              "item_id")
  assert got.kinds == want.kinds
  for column in want.columns:
    assert list(got.columns[column]) == list(want.columns[column]), column


@pytest.mark.parametrize("content, line, words", [
    ("user_id,item_id,timestamp\nu1,i1,1,2\n", 2, ["expected 3 fields", "unquoted ','"]),
    (bytes(range(256)) * 8, None, ["not valid UTF-8"]),
    ("user_id;item_id;timestamp\nu1;i1;1\n", 1, ["';'-separated"]),
    ("user_id,item_id,timestamp\nu1,i1,1\n,i2,2\n", 3, ["user_id", "empty"]),
    ('user_id,item_id,timestamp\nu1,"i1,1\nu2,i2,2\n', 2, ["closing quote"]),
    ("user_id,user_id,item_id,timestamp\nu,u,i,1\n", 1, ["appears twice"]),
    ("user_id,item_id,timestamp\nu1,i1,99999999999999\nu2,i2,1\nu3,i3,2\n", 2,
     ["2262"]),
])
def test_malformed_logs_are_one_located_line(tmp_path, content, line, words):
  path = _write(tmp_path, "log.csv", content)
  with pytest.raises(DataError) as e:
    readers.read_interactions(path)
  message = str(e.value)
  assert message.startswith(path + (f":{line}" if line else ":")), message
  assert "\n" not in message and all(w in message for w in words), message


def test_a_directory_or_a_keyless_table_is_a_located_error(tmp_path):
  with pytest.raises(DataError, match="is a directory"):
    readers.read_interactions(str(tmp_path))
  path = _write(tmp_path, "users.csv", "title\nAlien\n")
  with pytest.raises(DataError) as e:
    readers.read_features(path, "user_id")
  _assert_located(e.value, path, 1, "user_id")
  empty = _write(tmp_path, "items.csv", "")
  with pytest.raises(DataError, match="expected a header row .* e.g. item_id$"):
    readers.read_features(empty, "item_id")


@pytest.mark.parametrize("encoding, words", [("utf-16", ["UTF-16", "re-save"]),
                                             ("gzip", ["gzip", "decompress"])])
def test_utf16_and_compressed_files_are_named_as_such(tmp_path, encoding, words):
  import gzip
  text = "user_id,item_id,timestamp\nu1,i1,1\n"
  content = gzip.compress(text.encode()) if encoding == "gzip" else text.encode(encoding)
  path = _write(tmp_path, "log.csv", content)
  with pytest.raises(DataError) as e:
    readers.read_interactions(path)
  _assert_located(e.value, path, 1)
  assert all(w in str(e.value) for w in words), str(e.value)
