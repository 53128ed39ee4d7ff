"""Malformed inputs through the whole data path a user hits: flags -> files -> prepare.

Each bad input must end in a ``DataError`` that names the file (and the line and field where
there is one), or in a documented skip that ``prepare`` counts; never in a traceback from
inside pandas, numpy or TensorFlow. ``test_readers.py`` covers the readers one by one; this
corpus checks what reaches the user from ``load_raw`` + ``prepare``.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
from typing import Optional, Union

import numpy as np
import pytest

import twotower
from twotower.config import Config
from twotower.data import prepare as prepare_lib
from twotower.data import splits
from twotower.data.types import DataError

HEADER = "user_id,item_id,timestamp,rating\n"
# 4 users x 6 events: every user has train, validation and test events.
ROWS = [f"u{u},i{(u + j) % 7},{1000 + 10 * j},{j % 5 + 1}\n" for u in range(4) for j in range(6)]
GOOD = HEADER + "".join(ROWS)
BAD_LINE = len(ROWS) + 2   # a row appended to GOOD
USERS = "user_id,age\n" + "".join(f"u{u},{20 + u}\n" for u in range(4))
ITEMS = "item_id,genre\n" + "".join(f"i{i},g{i % 3}|g{i % 2 + 5}\n" for i in range(7))
PACKAGE_DIR = os.path.dirname(twotower.__file__)

Content = Union[str, bytes]


def _prepare(tmp_path: pathlib.Path, files: dict[str, Content], **data_flags):
  """Writes the files and runs what the CLI runs for --interactions/--*_features."""
  config = Config()
  paths = {}
  for name, content in files.items():
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    paths[name] = str(path)
  config.data.interactions = paths.get("interactions.csv") or paths["interactions.tsv"]
  config.data.user_features = paths.get("users.csv")
  config.data.item_features = paths.get("items.csv")
  for name, value in data_flags.items():
    setattr(config.data, name, value)
  return prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)


@dataclasses.dataclass
class Bad:
  """A malformed input: the error it must raise, and what ``--allow_bad_rows`` does."""
  name: str
  files: dict[str, Content]
  match: str                    # regex the message must contain
  line: Optional[int] = None    # the line the message must name
  field: Optional[str] = None   # the field the message must name
  # Rows ``--allow_bad_rows`` skips and counts; None: still an error, matching allow_match.
  skipped: Optional[int] = None
  allow_match: str = ""
  culprit: str = "interactions.csv"   # the file the message must name


def _inter(content: Content) -> dict[str, Content]:
  return {"interactions.csv": content}


BAD_INPUTS = [
    Bad("truncated_last_row", _inter(GOOD + "u3,i2"),
        r"expected 4 fields .* but found 2; a value is missing", BAD_LINE, skipped=1),
    Bad("truncated_mid_value", _inter(GOOD + "u3,i2,10"),
        r"expected 4 fields .* but found 3", BAD_LINE, skipped=1),
    Bad("semicolon_delimiter_in_csv", _inter(GOOD.replace(",", ";")),
        r"missing required column.*looks ';'-separated but this file is read as ','", 1,
        "user_id"),
    Bad("tab_delimiter_in_csv", _inter(GOOD.replace(",", "\t")),
        r"looks '\\t'-separated but this file is read as ','", 1, "user_id"),
    Bad("nan_rating", _inter(GOOD + "u1,i1,5000,nan\n"),
        r"rating 'nan' is not a finite number", BAD_LINE, "rating", skipped=1),
    Bad("inf_rating", _inter(GOOD + "u1,i1,5000,inf\n"),
        r"rating 'inf' is not a finite number", BAD_LINE, "rating", skipped=1),
    Bad("overflowing_rating", _inter(GOOD + "u1,i1,5000,-1e400\n"),
        r"rating '-1e400' is not a finite number", BAD_LINE, "rating", skipped=1),
    Bad("negative_timestamp", _inter(GOOD + "u1,i1,-5,3\n"),
        r"timestamp '-5' is negative", BAD_LINE, "timestamp", skipped=1),
    Bad("far_future_timestamp", _inter(GOOD + "u1,i1,99999999999999,3\n"),
        r"timestamp '99999999999999' is after 2262-04-11", BAD_LINE, "timestamp", skipped=1),
    Bad("millisecond_timestamp", _inter(GOOD + "u1,i1,1700000000000,3\n"),
        r"is after 2262-04-11.*milliseconds\? divide by 1000", BAD_LINE, "timestamp",
        skipped=1),
    Bad("far_future_iso_date", _inter(GOOD + "u1,i1,2999-01-01,3\n"),
        r"timestamp '2999-01-01' is after 2262-04-11", BAD_LINE, "timestamp", skipped=1),
    Bad("int64_overflowing_timestamp", _inter(GOOD + "u1,i1,1" + "0" * 25 + ",3\n"),
        r"is after 2262-04-11", BAD_LINE, "timestamp", skipped=1),
    Bad("enormous_id", _inter(GOOD + "x" * 10_000_000 + ",i1,5000,3\n"),
        r"value is 10,000,000 characters long, over the limit of 131,072", BAD_LINE,
        "user_id", skipped=1),
    Bad("enormous_quoted_value", _inter(GOOD + 'u1,"' + "y" * 200_000 + '",5000,3\n'),
        r"value is 200,000 characters long", BAD_LINE, "item_id", skipped=1),
    Bad("non_utf8_bytes", _inter(GOOD.encode() + b"u\xff1,i1,5000,3\n"),
        r"not valid UTF-8: byte 0xff at column 2", BAD_LINE, skipped=1),
    Bad("utf16_file", _inter(GOOD.encode("utf-16")), r"not valid UTF-8", 1),
    Bad("gzip_compressed_csv", _inter(gzip.compress(GOOD.encode())), r"not valid UTF-8", 1),
    Bad("empty_file", _inter(b""), r"the file is empty; expected a header row", 1),
    Bad("header_only", _inter(HEADER), r"header row but no data rows", 2),
    Bad("missing_required_column", _inter("user_id,item_id,rating\nu1,i1,3\n"),
        r"missing required column\(s\) \['timestamp'\]", 1, "timestamp"),
    Bad("ragged_row", _inter(GOOD + "u1,i1,5000,3,extra\n"),
        r"expected 4 fields .* but found 5; a value contains an unquoted ','", BAD_LINE,
        skipped=1),
    Bad("empty_item_id", _inter(GOOD + "u1,,5000,3\n"),
        r"empty value in a required column", BAD_LINE, "item_id", skipped=1),
    Bad("unbalanced_quote", _inter(GOOD + '"u1,i1,5000,3\n'),
        r"expected 4 fields .* but found 1", BAD_LINE, skipped=1),
    Bad("every_row_bad", _inter(HEADER + "".join(r[:-2] + "nan\n" for r in ROWS)),
        r"rating 'nan' is not a finite number", 2, "rating",
        allow_match=r"no usable interactions: all 24 rows were bad"),
    Bad("duplicate_item_feature_id", {"interactions.csv": GOOD, "items.csv": ITEMS + "i3,g9\n"},
        r"duplicate item_id 'i3': already on line 5", 9, "item_id", skipped=1,
        culprit="items.csv"),
    Bad("duplicate_user_feature_id", {"interactions.csv": GOOD, "users.csv": USERS + "u0,99\n"},
        r"duplicate user_id 'u0': already on line 2", 6, "user_id", skipped=1,
        culprit="users.csv"),
    Bad("feature_table_without_key", {"interactions.csv": GOOD, "items.csv": "name\ni1\n"},
        r"missing required column\(s\) \['item_id'\]", 1, "item_id", culprit="items.csv"),
    Bad("ragged_feature_row", {"interactions.csv": GOOD, "users.csv": USERS + "u9,1,2\n"},
        r"expected 2 fields .* but found 3", 6, skipped=1, culprit="users.csv"),
    Bad("non_utf8_feature_table",
        {"interactions.csv": GOOD, "items.csv": ITEMS.encode() + b"i9,caf\xe9\n"},
        r"not valid UTF-8: byte 0xe9", 9, skipped=1, culprit="items.csv"),
    # Held-out splits left empty: each user has 3 events (enough), but one of each is bad.
    Bad("empty_splits_after_skipping",
        _inter(HEADER + "".join(f"u{u},i{j},{100 + j},{'nan' if j == 0 else 3}\n"
                                for u in range(3) for j in range(3))),
        r"rating 'nan' is not a finite number", 2, "rating",
        allow_match=r"nothing to validate or test.*all 6 interactions went to train \(3 bad "
                    r"rows skipped\); add data or lower --min_user_interactions"),
    Bad("too_few_interactions", _inter(HEADER + "u1,i1,100,3\nu2,i2,200,4\n"),
        r"nothing to validate or test: no user has the --min_user_interactions=3 events", None),
]


def _check_located(error: DataError, path: str, case: Bad) -> None:
  message = str(error)
  assert error.path == path and message.startswith(path), message
  if case.line is not None:
    assert error.line == case.line and message.startswith(f"{path}:{case.line}"), message
  if case.field is not None:
    assert error.field == case.field and f"field '{case.field}'" in message, message


def _raised_by_twotower(excinfo: pytest.ExceptionInfo) -> bool:
  """The error comes from our own checks, not from deep inside a library."""
  return str(excinfo.traceback[-1].path).startswith(PACKAGE_DIR)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_is_a_located_error(case, tmp_path):
  with pytest.raises(DataError, match=case.match) as excinfo:
    _prepare(tmp_path, case.files)
  assert isinstance(excinfo.value, ValueError)
  assert _raised_by_twotower(excinfo), excinfo.traceback[-1]
  _check_located(excinfo.value, str(tmp_path / case.culprit), case)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_allow_bad_rows_skips_and_counts(case, tmp_path):
  if case.skipped is None:   # not a row's fault (or nothing left): an error either way
    with pytest.raises(DataError, match=case.allow_match or case.match) as excinfo:
      _prepare(tmp_path, case.files, allow_bad_rows=True)
    assert _raised_by_twotower(excinfo), excinfo.traceback[-1]
    return
  data = _prepare(tmp_path, case.files, allow_bad_rows=True)
  assert data.stats["skipped_rows"] == case.skipped
  assert data.stats["interactions"] == len(ROWS)


def test_no_held_out_data_is_fine_when_none_is_asked_for(tmp_path):
  files = next(c for c in BAD_INPUTS if c.name == "empty_splits_after_skipping").files
  data = _prepare(tmp_path, files, allow_bad_rows=True, valid_fraction=0.0, test_fraction=0.0)
  assert data.stats["train"] == 6 and data.stats["skipped_rows"] == 3


# ----------------------------------------------------------------------------------------
# Inputs that look odd but are fine: they must read exactly like the clean file.

ODD_BUT_FINE = {
    "utf8_bom": "\ufeff" + GOOD,
    "crlf_line_endings": GOOD.replace("\n", "\r\n"),
    "bom_and_crlf": "\ufeff" + GOOD.replace("\n", "\r\n"),
    "bare_cr_line_endings": GOOD.replace("\n", "\r"),
    "no_final_newline": GOOD.rstrip("\n"),
    "blank_lines": GOOD.replace("\n", "\n\n"),
    "spaces_around_values": GOOD.replace(",", " , "),
}


@pytest.mark.parametrize("name", sorted(ODD_BUT_FINE))
def test_odd_but_valid_files_read_like_the_clean_one(name, tmp_path):
  (tmp_path / "clean").mkdir()
  (tmp_path / "odd").mkdir()
  clean = _prepare(tmp_path / "clean", {"interactions.csv": GOOD})
  odd = _prepare(tmp_path / "odd", {"interactions.csv": ODD_BUT_FINE[name]})
  assert odd.stats == clean.stats
  np.testing.assert_array_equal(odd.user_vocab.tokens, clean.user_vocab.tokens)
  np.testing.assert_array_equal(odd.item_vocab.tokens, clean.item_vocab.tokens)
  np.testing.assert_array_equal(odd.events.timestamp, clean.events.timestamp)
  np.testing.assert_array_equal(odd.events.label, clean.events.label)


# ----------------------------------------------------------------------------------------
# Documented behaviours that are not errors.


def test_a_file_of_millisecond_timestamps_reads_like_seconds(tmp_path):
  # Timestamps only order events: a consistent finer unit splits exactly like seconds.
  (tmp_path / "s").mkdir()
  (tmp_path / "ms").mkdir()
  ms_rows = [f"u{u},i{(u + j) % 7},{1_700_000_000_000 + 10_000 * j},{j % 5 + 1}\n"
             for u in range(4) for j in range(6)]
  seconds = _prepare(tmp_path / "s", {"interactions.csv": GOOD})
  millis = _prepare(tmp_path / "ms", {"interactions.csv": HEADER + "".join(ms_rows)})
  assert millis.stats == seconds.stats
  np.testing.assert_array_equal(millis.events.split, seconds.events.split)


def test_user_with_a_single_interaction_trains_only(tmp_path):
  # Users below --min_user_interactions keep all their events in train (DataConfig).
  data = _prepare(tmp_path, {"interactions.csv": GOOD + "solo,i1,5000,3\n"})
  solo = data.user_vocab.lookup(np.array(["solo"], object))[0]
  assert list(data.events.split[data.events.user == solo]) == [splits.TRAIN]
  assert data.stats["interactions"] == len(ROWS) + 1
  assert data.stats["valid"] > 0 and data.stats["test"] > 0


def test_ids_absent_from_feature_tables_are_counted_and_get_default_features(tmp_path):
  users = "user_id,age\nu0,20\nu1,21\n"                # u2, u3 have no row
  items = "item_id,genre\ni0,a\ni1,b\ni2,c\nonly_in_table,d\n"   # i3..i6 have no row
  data = _prepare(tmp_path, {"interactions.csv": GOOD, "users.csv": users, "items.csv": items})
  assert data.stats["users_without_features"] == 2
  assert data.stats["items_without_features"] == 4
  # Kept (not dropped), with padding features; the table-only item is still retrievable.
  assert data.stats["interactions"] == len(ROWS)
  absent = data.item_vocab.lookup(np.array(["i3", "i6"], object))
  assert (data.item_features.values["genre"][absent] == 0).all()
  assert "only_in_table" in list(data.item_vocab.tokens)


def test_feature_tables_present_and_complete_count_nothing(tmp_path):
  data = _prepare(tmp_path, {"interactions.csv": GOOD, "users.csv": USERS, "items.csv": ITEMS})
  assert data.stats["users_without_features"] == 0
  assert data.stats["items_without_features"] == 0
  assert data.stats["skipped_rows"] == 0


def test_missing_file_names_the_flag_value(tmp_path):
  config = Config()
  config.data.interactions = str(tmp_path / "nope.csv")
  with pytest.raises(DataError, match="file not found") as excinfo:
    prepare_lib.load_raw(config.data)
  assert str(excinfo.value).startswith(config.data.interactions)


# ----------------------------------------------------------------------------------------
# Flags: validated before any data is read, each error naming its flag.

BAD_FLAGS = [
    ("train", "batch_size", 0, "--batch_size"),
    ("train", "batch_size", -8, "--batch_size"),
    ("train", "epochs", 0, "--epochs"),
    ("train", "step_limit", -1, "--step_limit"),
    ("train", "learning_rate", -0.1, "--learning_rate"),
    ("train", "learning_rate", 0.0, "--learning_rate"),
    ("train", "learning_rate", float("nan"), "--learning_rate"),
    ("train", "optimizer", "sgd", "--optimizer"),
    ("train", "global_clipnorm", -1.0, "--global_clipnorm"),
    ("train", "patience", -1, "--patience"),
    ("train", "lr_plateau_patience", -1, "--lr_plateau_patience"),
    ("train", "lr_plateau_factor", 0.0, "--lr_plateau_factor"),
    ("train", "lr_plateau_factor", 2.0, "--lr_plateau_factor"),
    ("train", "checkpoint_every_steps", -5, "--checkpoint_every_steps"),
    ("train", "max_recoveries", -1, "--max_recoveries"),
    ("train", "recovery_lr_factor", 0.0, "--recovery_lr_factor"),
    ("train", "divergence_spike_factor", 1.0, "--divergence_spike_factor"),
    ("train", "distribution", "tpu", "--distribution"),
    ("train", "eval_ks", (10, 0), "--eval_ks"),
    ("train", "eval_ks", (-5,), "--eval_ks"),
    ("train", "eval_ks", (), "--eval_ks"),
    ("train", "early_stopping_metric", "recall@7", "--early_stopping_metric"),
    ("loss", "temperature", 0.0, "--temperature"),
    ("loss", "temperature", -0.05, "--temperature"),
    ("loss", "temperature", float("inf"), "--temperature"),
    ("loss", "queue_size", -2, "--queue_size"),
    ("loss", "queue_size", 100, "--queue_size .* must be at least --batch_size"),
    ("loss", "queue_warmup_steps", -1, "--queue_warmup_steps"),
    ("loss", "query_memory_size", -2, "--query_memory_size"),
    ("loss", "frequency", "dynamic", "--frequency"),
    ("data", "history_length", 0, "--history_length"),
    ("data", "valid_fraction", -0.1, "--valid_fraction"),
    ("data", "test_fraction", 1.0, "--test_fraction"),
    ("data", "valid_fraction", 0.95, r"--valid_fraction \+ --test_fraction"),
    ("data", "max_tokens", 0, "--max_tokens"),
    ("data", "num_oov_buckets", 0, "--num_oov_buckets"),
    ("data", "synthetic_clusters", 0, "--synthetic_clusters"),
    ("data", "synthetic_affinity_temperature", 0.0, "--synthetic_affinity_temperature"),
    ("model", "embedding_dim", 0, "--embedding_dim"),
    ("model", "id_embedding_dim", -1, "--id_embedding_dim"),
    ("model", "feature_embedding_dim", 0, "--feature_embedding_dim"),
    ("model", "user_layers", (256, 0), "--user_layers"),
    ("model", "item_layers", (-1,), "--item_layers"),
    ("model", "dropout", 1.0, "--dropout"),
    ("model", "id_dropout", -0.1, "--id_dropout"),
]


@pytest.fixture(scope="module")
def train_job():
  from twotower.jobs import train as train_job  # imports TensorFlow: only for these tests
  return train_job


def test_default_flags_are_valid():
  Config().validate()


@pytest.mark.parametrize("section,field,value,flag", BAD_FLAGS,
                         ids=[f"{f}={v}" for _, f, v, _ in BAD_FLAGS])
def test_bad_flag_is_rejected_naming_it(section, field, value, flag):
  config = Config()
  setattr(getattr(config, section), field, value)
  if field == "queue_size" and value == 100:
    config.train.batch_size = 128
  with pytest.raises(ValueError, match=flag):
    config.validate()


@pytest.mark.parametrize("field,value", [("frequency_hashes", 0), ("frequency_hashes", 6),
                                         ("frequency_buckets", -1),
                                         ("frequency_learning_rate", 0.0)])
def test_streaming_frequency_flags_are_checked_when_used(field, value):
  config = Config()
  setattr(config.loss, field, value)
  config.validate()   # ignored with --frequency=static
  config.loss.frequency = "streaming"
  with pytest.raises(ValueError, match=f"--{field}"):
    config.validate()


def test_queue_equal_to_batch_and_auto_or_off_are_valid():
  config = Config()
  for queue_size in (-1, 0, config.train.batch_size):
    config.loss.queue_size = queue_size
    config.validate()


def test_query_memory_without_the_item_queue_is_refused():
  config = Config()
  config.loss.queue_size, config.loss.query_memory_size = 0, 512
  with pytest.raises(ValueError, match="--query_memory_size needs the item queue"):
    config.validate()
  config.loss.query_memory_size = -1     # auto: none without a queue
  config.validate()


def test_flags_are_checked_before_any_data_is_read(train_job, tmp_path):
  config = Config()
  config.data.interactions = str(tmp_path / "missing.csv")   # would be a DataError
  config.loss.temperature = -1.0
  with pytest.raises(ValueError, match="--temperature") as excinfo:
    train_job.train(config, str(tmp_path / "workdir"))
  assert not isinstance(excinfo.value, DataError)
  assert not (tmp_path / "workdir").exists()
