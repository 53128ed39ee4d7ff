"""Security: tampered exports, symlinks, unsafe deserialisation, dataset archive members.

An export's manifest and index.json are not signed, so whoever can edit them can make the
loader look anywhere they name. These tests tamper copies of a real (tiny, ScaNN) export the
way an attacker would, keeping every recorded sha256 consistent so that only the path checks
(``fileio.resolve_inside``) stand in the way, and expect an IntegrityError before anything
outside the export is read.
"""
import ast
import hashlib
import io
import os
import pathlib
import re
import shutil
import stat
import subprocess
import tokenize
import zipfile

import pytest

from twotower import export_artifacts as export_lib
from twotower import fileio, serving
from twotower import index as index_lib
from twotower.data import movielens

IntegrityError = index_lib.IntegrityError
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "twotower"


@pytest.fixture(scope="module")
def export_dir(tiny_scann_export):
  """A real ScaNN export (searcher under index/), so that searcher paths are exercised."""
  meta = fileio.read_json(os.path.join(tiny_scann_export, index_lib.INDEX_JSON))
  assert meta["searcher_dir"] == "index"
  return tiny_scann_export


def _copy(export_dir, tmp_path, name="export") -> str:
  target = str(tmp_path / name)
  shutil.copytree(export_dir, target, symlinks=True)
  return target


def _edit_json(path, edit) -> None:
  data = fileio.read_json(path)
  edit(data)
  fileio.atomic_write_json(path, data)


def _record(directory, rel) -> None:
  """Updates the manifest's sha256 of ``rel`` to the file's current bytes, as an attacker
  editing the export would, so that only path checks can refuse it."""
  digest = fileio.sha256_file(os.path.join(directory, *rel.split("/")))
  _edit_json(os.path.join(directory, export_lib.MANIFEST),
             lambda m: m["files"][rel].update(sha256=digest))


@pytest.fixture
def hashed(monkeypatch):
  """Records every path the loaders hash."""
  paths = []
  original = fileio.sha256_file

  def sha256_file(path):
    paths.append(os.path.realpath(path))
    return original(path)

  monkeypatch.setattr(fileio, "sha256_file", sha256_file)
  return paths


def test_the_untampered_export_loads(export_dir, tmp_path):
  """The control: the copies below fail because of what was changed, not the copy."""
  d = _copy(export_dir, tmp_path)
  rec = serving.Recommender.load(d)
  assert len(rec.recommend({"user_id": str(rec.defaults["user_id"][0])}, k=5)) == 5
  assert index_lib.load_index(d).kind == index_lib.SCANN
  link = str(tmp_path / "link-to-export")   # a symlinked export directory is fine
  os.symlink(d, link)
  serving.Recommender.load(link)


# --------------------------------------------------------------- (a) manifest paths


@pytest.mark.parametrize("how", ["dotdot", "nested_dotdot", "absolute", "backslash"])
@pytest.mark.parametrize("verify", [True, False])
def test_manifest_file_paths_leaving_the_export_are_refused(export_dir, tmp_path, hashed,
                                                            how, verify):
  d = _copy(export_dir, tmp_path)
  secret = tmp_path / "secret.bin"
  secret.write_bytes(b"not part of the export")
  rel = {"dotdot": "../secret.bin", "nested_dotdot": "query_model/../../secret.bin",
         "absolute": str(secret), "backslash": "..\\secret.bin"}[how]
  digest = hashlib.sha256(secret.read_bytes()).hexdigest()
  _edit_json(os.path.join(d, export_lib.MANIFEST),
             lambda m: m["files"].update({rel: {"sha256": digest, "bytes": 22}}))
  with pytest.raises(IntegrityError, match="leaves that directory"):
    serving.Recommender.load(d, verify=verify)
  assert os.path.realpath(secret) not in hashed


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_ranking_model_path_leaving_the_export_is_refused(export_dir, tmp_path, how):
  d = _copy(export_dir, tmp_path)
  outside = _copy(export_dir, tmp_path, "other")   # a loadable SavedModel outside d
  path = {"dotdot": "../other/query_model",
          "absolute": os.path.join(outside, "query_model")}[how]
  _edit_json(os.path.join(d, export_lib.MANIFEST),
             lambda m: m.update(ranking_model={"path": path}))
  with pytest.raises(IntegrityError, match="leaves that directory"):
    serving.Recommender.load(d)


@pytest.mark.parametrize("how", ["dotdot", "nested_dotdot", "absolute"])
def test_index_searcher_dir_outside_is_refused(export_dir, tmp_path, how):
  d = _copy(export_dir, tmp_path)
  outside = tmp_path / "outside_searcher"
  shutil.copytree(os.path.join(d, "index"), outside)   # a real searcher it could load
  searcher_dir = {"dotdot": "../outside_searcher", "nested_dotdot": "index/../../outside_searcher",
                  "absolute": str(outside)}[how]
  _edit_json(os.path.join(d, index_lib.INDEX_JSON),
             lambda meta: meta.update(searcher_dir=searcher_dir))
  with pytest.raises(IntegrityError, match="leaves that directory"):
    index_lib.load_index(d)
  with pytest.raises(IntegrityError, match="leaves that directory"):
    index_lib.load_index(d, verify=False)
  _record(d, index_lib.INDEX_JSON)
  with pytest.raises(IntegrityError, match="leaves that directory"):
    serving.Recommender.load(d)


def test_index_file_paths_leaving_the_index_are_refused(export_dir, tmp_path, hashed):
  d = _copy(export_dir, tmp_path)
  secret = tmp_path / "secret.bin"
  secret.write_bytes(b"x")
  digest = hashlib.sha256(b"x").hexdigest()
  _edit_json(os.path.join(d, index_lib.INDEX_JSON),
             lambda meta: meta["files"].update({"../secret.bin": digest}))
  with pytest.raises(IntegrityError, match="leaves that directory"):
    index_lib.load_index(d)
  assert os.path.realpath(secret) not in hashed


# --------------------------------------------------------------- (b) symlinks


@pytest.mark.parametrize("verify", [True, False])
def test_symlinked_file_pointing_outside_is_refused(export_dir, tmp_path, hashed, verify):
  d = _copy(export_dir, tmp_path)
  outside = tmp_path / "item_ids.txt"   # byte-identical, so only the location is wrong
  shutil.move(os.path.join(d, index_lib.ITEM_IDS), outside)
  os.symlink(outside, os.path.join(d, index_lib.ITEM_IDS))
  with pytest.raises(IntegrityError, match="symbolic link|resolves outside"):
    serving.Recommender.load(d, verify=verify)
  with pytest.raises(IntegrityError, match="resolves outside"):
    index_lib.load_index(d)
  assert os.path.realpath(outside) not in hashed


def test_symlinked_directories_pointing_outside_are_refused(export_dir, tmp_path):
  for name in ("index", "query_model"):
    d = _copy(export_dir, tmp_path, f"export_{name}")
    outside = tmp_path / f"outside_{name}"
    shutil.move(os.path.join(d, name), outside)
    os.symlink(outside, os.path.join(d, name))
    with pytest.raises(IntegrityError, match="symbolic link|resolves outside"):
      serving.Recommender.load(d)
  with pytest.raises(IntegrityError, match="resolves outside"):
    index_lib.load_index(str(tmp_path / "export_index"))


def test_searcher_dir_symlinked_outside_is_refused_without_file_checks(export_dir, tmp_path):
  """load_index(verify=False) skips hashes but must still refuse a searcher elsewhere."""
  d = _copy(export_dir, tmp_path)
  outside = tmp_path / "outside_index"
  shutil.move(os.path.join(d, "index"), outside)
  os.symlink(outside, os.path.join(d, "index"))
  with pytest.raises(IntegrityError, match="resolves outside"):
    index_lib.load_index(d, verify=False)


def test_unlisted_symlink_is_refused(export_dir, tmp_path):
  d = _copy(export_dir, tmp_path)
  outside = tmp_path / export_lib.USER_DEFAULTS
  shutil.move(os.path.join(d, export_lib.USER_DEFAULTS), outside)
  os.symlink(outside, os.path.join(d, export_lib.USER_DEFAULTS))
  _edit_json(os.path.join(d, export_lib.MANIFEST),
             lambda m: m["files"].pop(export_lib.USER_DEFAULTS))
  with pytest.raises((IntegrityError, FileNotFoundError)):
    serving.Recommender.load(d)


def test_scann_asset_paths_leaving_the_searcher_are_refused(export_dir, tmp_path):
  d = _copy(export_dir, tmp_path)
  shutil.copy(os.path.join(d, "index", "hashed_dataset.npy"), tmp_path / "stolen.npy")
  assets = os.path.join(d, "index", "scann_assets.pbtxt")
  with open(assets) as f:
    text = f.read()
  with open(assets, "w") as f:
    f.write(text.replace('"hashed_dataset.npy"', '"../../stolen.npy"'))
  digest = fileio.sha256_file(assets)
  _edit_json(os.path.join(d, index_lib.INDEX_JSON),
             lambda meta: meta["files"].update({"index/scann_assets.pbtxt": digest}))
  _record(d, "index/scann_assets.pbtxt")
  _record(d, index_lib.INDEX_JSON)
  with pytest.raises(IntegrityError):
    serving.Recommender.load(d)


# --------------------------------------------------------------- (c) source scan

_BANNED = {
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "eval(": re.compile(r"\beval\s*\("),
    "exec(": re.compile(r"\bexec\s*\("),
    "pickle.load": re.compile(r"\bc?[pP]ickle\.(load|loads|Unpickler)\b"),
    "import pickle/dill/shelve/marshal": re.compile(
        r"^\s*(import|from)\s+(c?pickle|dill|shelve|marshal|joblib)\b", re.M),
    "yaml.load": re.compile(r"\byaml\.(unsafe_)?load\s*\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def _code_without_comments(source: str) -> str:
  """The source with comments blanked (strings, docstrings included, are kept)."""
  lines = source.splitlines(keepends=True)
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      (row, col), _ = token.start, token.end
      lines[row - 1] = lines[row - 1][:col] + "\n"
  return "".join(lines)


def _scan(source: str) -> list:
  code = _code_without_comments(source)
  hits = [name for name, pattern in _BANNED.items() if pattern.search(code)]
  for node in ast.walk(ast.parse(source)):   # np.load must say allow_pickle=False
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("np", "numpy")):
      flag = [kw.value for kw in node.keywords if kw.arg == "allow_pickle"]
      if not (flag and isinstance(flag[0], ast.Constant) and flag[0].value is False):
        hits.append(f"np.load without allow_pickle=False (line {node.lineno})")
  return hits


def test_the_scanner_finds_what_it_bans():
  assert _scan("x = 1  # eval( exec( pickle.load allow_pickle=True\n") == []
  assert _scan("y = eval('1')\n") == ["eval("]
  assert _scan("exec ('1')\n") == ["exec("]
  assert _scan("import pickle\npickle.loads(b'')\n") == [
      "pickle.load", "import pickle/dill/shelve/marshal"]
  assert _scan("import numpy as np\nnp.load('a.npy', allow_pickle=True)\n") == [
      "allow_pickle=True", "np.load without allow_pickle=False (line 2)"]
  assert _scan("import numpy as np\nnp.load('a.npy')\n") == [
      "np.load without allow_pickle=False (line 2)"]
  assert _scan('"""Docstrings count: eval(x)."""\n') == ["eval("]
  assert _scan("model.evaluate(x)\nos.execv(a, b)\n") == []


def test_package_source_has_no_unsafe_deserialisation_or_code_execution():
  files = sorted(PACKAGE.rglob("*.py"))
  assert len(files) > 20, files   # the scan really looked at the package
  found = {}
  for path in files:
    hits = _scan(path.read_text(encoding="utf-8"))
    if hits:
      found[str(path.relative_to(PACKAGE.parent))] = hits
  assert not found, found


# --------------------------------------------------------------- (d) dataset archive
# tests/test_movielens.py covers '..', absolute POSIX names, the sha256 check and missing
# members; these cover Windows-style names, size limits and archives that lie.

_MEMBERS = {movielens._MEMBER_DIR + name: f"{name}:token\n1\n" for name in movielens.FILES}


def _use_wheel(monkeypatch, path: pathlib.Path) -> None:
  monkeypatch.setenv(movielens.WHEEL_ENV, str(path))
  monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256",
                      hashlib.sha256(path.read_bytes()).hexdigest())

  def no_pip(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess.run{args}")

  monkeypatch.setattr(subprocess, "run", no_pip)


def _wheel(path: pathlib.Path, members: dict) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return path


@pytest.mark.parametrize("evil", ["..\\..\\evil.txt", "\\evil.txt", "C:evil.txt",
                                  "C:\\Windows\\evil.txt", "D:/evil.txt",
                                  "recbole\\dataset_example\\..\\..\\..\\evil.txt"])
def test_windows_style_member_names_are_refused(monkeypatch, tmp_path, evil):
  wheel = _wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME, {**_MEMBERS, evil: "gotcha"})
  _use_wheel(monkeypatch, wheel)
  cache = tmp_path / "cache"
  with pytest.raises(movielens.FetchError, match="unsafe member"):
    movielens.fetch_movielens_100k(cache)
  assert not list(cache.iterdir())
  assert not list(tmp_path.rglob("*evil*"))


def test_implausibly_large_member_is_refused(monkeypatch, tmp_path):
  monkeypatch.setattr(movielens, "_MAX_MEMBER_BYTES", 1000)
  members = dict(_MEMBERS)
  members[movielens._MEMBER_DIR + "ml-100k.item"] = "x" * 1001
  _use_wheel(monkeypatch, _wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME, members))
  with pytest.raises(movielens.FetchError, match="implausibly large"):
    movielens.fetch_movielens_100k(tmp_path / "cache")
  assert not list((tmp_path / "cache").iterdir())


def test_member_that_lies_about_its_size_is_not_written_out(monkeypatch, tmp_path):
  """The size limit reads the header; a member whose data is larger than its header says
  must not be copied out past that size (zipfile stops there and fails the CRC)."""
  name = movielens._MEMBER_DIR + "ml-100k.inter"
  members = {**_MEMBERS, name: "x" * 100_000}
  data = bytearray(_wheel(tmp_path / "honest.whl", members).read_bytes())
  encoded = name.encode()
  for signature, name_len_at, size_at, name_at in ((b"PK\x03\x04", 26, 22, 30),
                                                   (b"PK\x01\x02", 28, 24, 46)):
    start = data.find(signature)
    while start >= 0:
      length = int.from_bytes(data[start + name_len_at:start + name_len_at + 2], "little")
      if data[start + name_at:start + name_at + length] == encoded:
        data[start + size_at:start + size_at + 4] = (10).to_bytes(4, "little")
      start = data.find(signature, start + 4)
  wheel = tmp_path / movielens.RECBOLE_WHEEL_FILENAME
  wheel.write_bytes(bytes(data))
  assert zipfile.ZipFile(wheel).getinfo(name).file_size == 10
  _use_wheel(monkeypatch, wheel)
  with pytest.raises((movielens.FetchError, zipfile.BadZipFile)):
    movielens.fetch_movielens_100k(tmp_path / "cache")
  assert not list((tmp_path / "cache").iterdir())


def test_symlink_member_is_copied_as_data_not_followed(monkeypatch, tmp_path):
  """A member marked as a symlink becomes a plain file holding the link text."""
  wheel = tmp_path / movielens.RECBOLE_WHEEL_FILENAME
  with zipfile.ZipFile(wheel, "w") as archive:
    for name, text in _MEMBERS.items():
      if name.endswith(".user"):
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
      else:
        archive.writestr(name, text)
  _use_wheel(monkeypatch, wheel)
  directory = movielens.fetch_movielens_100k(tmp_path / "cache")
  target = directory / "ml-100k.user"
  assert not target.is_symlink() and target.read_text() == "/etc/passwd"
  assert all(not p.is_symlink() for p in directory.iterdir())


def test_not_a_zip_is_a_fetch_error(monkeypatch, tmp_path):
  wheel = tmp_path / movielens.RECBOLE_WHEEL_FILENAME
  wheel.write_bytes(b"<html>a proxy's error page</html>")
  _use_wheel(monkeypatch, wheel)
  with pytest.raises(movielens.FetchError, match="not a valid wheel"):
    movielens.fetch_movielens_100k(tmp_path / "cache")
  assert not list((tmp_path / "cache").iterdir())


def test_only_the_three_files_are_extracted(monkeypatch, tmp_path):
  members = {**_MEMBERS, movielens._MEMBER_DIR + "run_me.sh": "rm -rf /",
             "recbole/dataset_example/ml-100k/.complete": "forged marker"}
  _use_wheel(monkeypatch, _wheel(tmp_path / movielens.RECBOLE_WHEEL_FILENAME, members))
  directory = movielens.fetch_movielens_100k(tmp_path / "cache")
  assert sorted(p.name for p in directory.iterdir()) == sorted([*movielens.FILES, ".complete"])
  assert "forged" not in (directory / ".complete").read_text()
  assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ml-100k"]
