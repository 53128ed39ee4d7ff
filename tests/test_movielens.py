"""Tests for twotower.data.movielens: fetch, verify, extract safely, cache."""
from __future__ import annotations

import hashlib
import pathlib
import subprocess
import zipfile
from typing import Optional

import pytest

from twotower.data import movielens, types

_INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "1\t10\t4\t100\n2\t10\t3\t200\n")
_USER = ("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
         "1\t20\tM\twriter\t1\n2\t30\tF\tother\t2\n")
_ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
         "10\tToy Story\t1995\tAnimation Children's Comedy\n")


def _fake_wheel(path: pathlib.Path,
                extra: Optional[dict[str, str]] = None) -> pathlib.Path:
  members = {movielens._MEMBER_DIR + "ml-100k.inter": _INTER,
             movielens._MEMBER_DIR + "ml-100k.user": _USER,
             movielens._MEMBER_DIR + "ml-100k.item": _ITEM,
             movielens._MEMBER_DIR + "ml-100k.kg": "not wanted\n",
             "recbole/__init__.py": "",
             **(extra or {})}
  with zipfile.ZipFile(path, "w") as archive:
    for name, text in members.items():
      archive.writestr(name, text)
  return path


def _sha(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_pip(monkeypatch):
  """Fails the test if anything tries to run pip."""

  def run(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess.run{args}")

  monkeypatch.setattr(subprocess, "run", run)


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("TWOTOWER_CACHE", str(tmp_path))
  assert movielens.default_cache_dir() == tmp_path
  monkeypatch.delenv("TWOTOWER_CACHE")
  assert movielens.default_cache_dir() == pathlib.Path.home() / ".cache" / "twotower"


def test_local_wheel_is_verified_and_extracted(monkeypatch, tmp_path, no_pip):
  wheel = _fake_wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME)
  monkeypatch.setenv(movielens.WHEEL_ENV, str(wheel))
  monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", _sha(wheel))
  cache = tmp_path / "cache"
  directory = movielens.fetch_movielens_100k(cache)
  assert directory == cache / "ml-100k"
  assert sorted(p.name for p in directory.iterdir()) == sorted(
      [*movielens.FILES, ".complete"])
  assert (directory / "ml-100k.inter").read_text() == _INTER
  assert [p.name for p in cache.iterdir()] == ["ml-100k"]   # no staging leftovers

  raw = movielens.load_movielens_100k(cache)
  assert raw.name == "movielens-100k"
  assert list(raw.interactions.timestamp) == [100, 200]
  assert list(raw.user_features.columns) == ["user_id", "age", "gender", "occupation",
                                             "zip_code"]
  assert raw.item_features.kinds["movie_title"] == types.TOKEN_SEQ
  assert raw.item_features.kinds["class"] == types.TOKEN_SEQ


def test_sha_mismatch_is_refused_before_opening(monkeypatch, tmp_path, no_pip):
  wheel = _fake_wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME)
  monkeypatch.setenv(movielens.WHEEL_ENV, str(wheel))
  monkeypatch.setattr(movielens.zipfile, "ZipFile",
                      lambda *a, **k: pytest.fail("opened an unverified wheel"))
  with pytest.raises(movielens.FetchError) as e:
    movielens.fetch_movielens_100k(tmp_path / "cache")
  message = str(e.value)
  assert "sha256 mismatch" in message
  assert movielens.RECBOLE_WHEEL_SHA256 in message and _sha(wheel) in message
  assert not (tmp_path / "cache" / "ml-100k").exists()


@pytest.mark.parametrize("evil", ["../../evil.txt", "/etc/evil",
                                  "recbole/dataset_example/ml-100k/../../../evil"])
def test_malicious_member_names_are_refused(monkeypatch, tmp_path, no_pip, evil):
  wheel = _fake_wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME, {evil: "gotcha"})
  monkeypatch.setenv(movielens.WHEEL_ENV, str(wheel))
  monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", _sha(wheel))
  cache = tmp_path / "deep" / "cache"
  with pytest.raises(movielens.FetchError, match="unsafe member"):
    movielens.fetch_movielens_100k(cache)
  assert not (cache / "ml-100k").exists()
  assert not list(tmp_path.rglob("evil*"))


def test_missing_member_is_reported(monkeypatch, tmp_path, no_pip):
  wheel = tmp_path / movielens.RECBOLE_WHEEL_FILENAME
  with zipfile.ZipFile(wheel, "w") as archive:
    archive.writestr("recbole/__init__.py", "")
  monkeypatch.setenv(movielens.WHEEL_ENV, str(wheel))
  monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", _sha(wheel))
  with pytest.raises(movielens.FetchError, match="ml-100k.inter not found"):
    movielens.fetch_movielens_100k(tmp_path / "cache")


def test_incomplete_cache_is_refetched(monkeypatch, tmp_path, no_pip):
  cache = tmp_path / "cache"
  (cache / "ml-100k").mkdir(parents=True)
  (cache / "ml-100k" / "ml-100k.inter").write_text("half written")   # no .complete marker
  wheel = _fake_wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME)
  monkeypatch.setenv(movielens.WHEEL_ENV, str(wheel))
  monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", _sha(wheel))
  directory = movielens.fetch_movielens_100k(cache)
  assert (directory / "ml-100k.inter").read_text() == _INTER


def test_pip_failure_shows_output_and_the_fix(monkeypatch, tmp_path):
  monkeypatch.delenv(movielens.WHEEL_ENV, raising=False)
  calls = []

  def run(command, **kwargs):
    calls.append(command)
    return subprocess.CompletedProcess(command, 1, stdout="Looking in indexes...\n",
                                       stderr="ERROR: No matching distribution\n")

  monkeypatch.setattr(subprocess, "run", run)
  with pytest.raises(movielens.FetchError) as e:
    movielens.fetch_movielens_100k(tmp_path / "cache")
  message = str(e.value)
  assert "No matching distribution" in message and "network access to PyPI" in message
  assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--no-binary=:none:",
                          "--only-binary=:all:", "-d", calls[0][-2], "recbole==1.2.1"]
  assert not list((tmp_path / "cache").iterdir())   # staging cleaned up


def test_fetch_real(monkeypatch, tmp_path):
  """Downloads the real wheel from PyPI (a few MB) and checks the dataset's size."""
  monkeypatch.delenv(movielens.WHEEL_ENV, raising=False)
  cache = tmp_path / "cache"
  raw = movielens.load_movielens_100k(cache)
  assert len(raw.interactions) == 100_000
  assert len(raw.user_features) == 943
  assert len(raw.item_features) == 1682
  assert raw.interactions.skipped == 0
  assert raw.item_features.kinds == {"item_id": types.TOKEN,
                                     "movie_title": types.TOKEN_SEQ,
                                     "release_year": types.TOKEN,
                                     "class": types.TOKEN_SEQ}
  assert set(raw.user_features.columns) == {"user_id", "age", "gender", "occupation",
                                            "zip_code"}

  def no_pip(*args, **kwargs):
    raise AssertionError("pip ran although the dataset is cached")

  monkeypatch.setattr(subprocess, "run", no_pip)
  again = movielens.load_movielens_100k(cache)
  assert len(again.interactions) == 100_000
