"""Every job ends a user's mistake with one line on stderr and exit status 2, no traceback.

Each case runs the real console entry point (``python -m twotower.cli.JOB``) in a
subprocess; they fail before any training, and run a few at a time to keep the file fast.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys

import pytest

HEADER = "user_id,item_id,timestamp\n"
GOOD = HEADER + "".join(f"u{u},i{i},{1000 + 10 * u + i}\n" for u in range(6) for i in range(5))

# name -> content of the input files the cases below point at.
FILES = {
    "empty.csv": b"",
    "header_only.csv": HEADER,
    "no_timestamp.csv": "user_id,item_id\nu1,i1\n",
    "bad_timestamp.csv": HEADER + "u1,i1,1000\nu1,i2,yesterday\n",
    "latin1.csv": (HEADER + "u1,caf\xe9,1000\n").encode("latin-1"),
    "open_quote.csv": HEADER + 'u1,"i1,1000\nu2,i2,1001\n',
    "nan_rating.csv": "user_id,item_id,timestamp,rating\nu1,i1,1000,4\nu1,i2,1001,nan\n",
    "one_row.csv": HEADER + "u1,i1,1000\n",
    "good.csv": GOOD,
    "items_duplicate.csv": "item_id,title\ni1,Alien\ni2,Heat\ni1,Ran\n",
}


def _cases(tmp):
  """(job, argv, texts the one line must contain)."""
  def path(name):
    return os.path.join(tmp, name)

  def train(name, *more):
    return ("train", [f"--workdir={path('runs/' + name)}", f"--interactions={path(name)}",
                      "--noprogress", *more])

  empty_dir = path("empty_run")
  # One case per kind of check the readers and the data preparation make; the other
  # malformed files are covered in-process by tests/test_readers.py (TensorFlow loads
  # before the data is read, so each case here costs a TensorFlow import).
  data = [
      (*train("empty.csv"), ["empty.csv:1", "empty"]),
      (*train("header_only.csv"), ["header_only.csv:2", "no data rows"]),
      (*train("no_timestamp.csv"), ["no_timestamp.csv:1", "timestamp"]),
      (*train("bad_timestamp.csv"), ["bad_timestamp.csv:3", "timestamp", "yesterday"]),
      (*train("latin1.csv"), ["latin1.csv:2", "UTF-8"]),
      (*train("open_quote.csv"), ["open_quote.csv:2", "quote"]),
      (*train("nan_rating.csv"), ["nan_rating.csv:3", "rating"]),
      (*train("one_row.csv"), ["one_row.csv", "--min_user_interactions"]),
      (*train("missing.csv"), ["missing.csv", "not found"]),
      (*train("good.csv", f"--item_features={path('items_duplicate.csv')}"),
       ["items_duplicate.csv:4", "item_id", "line 2"]),
  ]
  flags = [
      ("train", [f"--workdir={empty_dir}", "--batch_size=many"], ["--batch_size=many"]),
      ("train", [f"--workdir={empty_dir}", "--no_such_flag=1"], ["no_such_flag"]),
      ("train", ["--noprogress"], ["--workdir is required"]),
      ("train", [f"--workdir={empty_dir}", "--optimizer=sgd"], ["--optimizer", "lazy_adam"]),
      ("train", [f"--workdir={empty_dir}", "--batch_size=0"], ["--batch_size", "positive"]),
      ("train", [f"--workdir={empty_dir}", "--user_layers=64,wide"], ["--user_layers"]),
      ("train", [f"--workdir={empty_dir}", "batch_size=5"], ["batch_size=5", "flag"]),
      ("train", [f"--flagfile={path('absent.flags')}"], ["absent.flags"]),
      ("train", [f"--workdir={path('good.csv')}"], ["--workdir", "directory"]),
      ("pipeline", [f"--workdir={empty_dir}", "--ranking_loss=hinge"], ["--ranking_loss"]),
      ("pipeline", [f"--workdir={empty_dir}", "--ranking_npratio=0"], ["--ranking_npratio"]),
      ("pipeline", [f"--workdir={path('runs/p')}", f"--interactions={path('empty.csv')}"],
       ["empty.csv:1"]),
      ("rank", [f"--workdir={empty_dir}", "--npratio=100"],
       ["--ranking_npratio", "--ranking_num_candidates"]),
      ("rank", [f"--workdir={empty_dir}"], ["config.json", "twotower-train"]),
      ("index", [f"--workdir={empty_dir}"], ["config.json", "twotower-train"]),
      ("index", [f"--workdir={empty_dir}", "--recall_target=high"], ["--recall_target"]),
      ("export", [f"--workdir={empty_dir}"], [empty_dir, "twotower-index"]),
      ("export", [f"--workdir={empty_dir}", f"--export_dir={path('good.csv')}"],
       ["--export_dir"]),
      ("evaluate", [f"--workdir={empty_dir}"], ["config.json", "twotower-train"]),
      ("evaluate", [f"--workdir={empty_dir}", "--ks=10,x"], ["--ks"]),
      ("recommend", [f"--export_dir={empty_dir}", "--user_id=u1"], ["manifest.json"]),
      ("recommend", [f"--export_dir={path('broken_run')}", "--user_id=u1"],
       ["manifest.json", "corrupted"]),
      ("evaluate", [f"--workdir={path('broken_run')}"], ["config.json", "not valid JSON"]),
      ("index", [f"--workdir={path('stale_run')}"], ["config.json", "unknown", "bogus"]),
      ("recommend", [f"--export_dir={path('no_export')}", "--user_id=u1"], ["no_export"]),
      ("recommend", [f"--export_dir={empty_dir}"], ["--user_id is required"]),
      ("recommend", [f"--export_dir={empty_dir}", "--user_id=u1", "--k=ten"], ["--k=ten"]),
  ]
  return data + flags


def _run(job, argv, env):
  return subprocess.run([sys.executable, "-m", f"twotower.cli.{job}", *argv],
                        capture_output=True, text=True, timeout=300, env=env, check=False)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("bad_inputs"))
  for name, content in FILES.items():
    with open(os.path.join(tmp, name), "wb") as f:
      f.write(content if isinstance(content, bytes) else content.encode("utf-8"))
  os.makedirs(os.path.join(tmp, "empty_run"))
  os.makedirs(os.path.join(tmp, "broken_run", "checkpoints"))   # a run and an export, damaged
  for name in ("config.json", "manifest.json", os.path.join("checkpoints", "best.index")):
    with open(os.path.join(tmp, "broken_run", name), "w") as f:
      f.write("{not json")
  shutil.copytree(os.path.join(tmp, "broken_run"), os.path.join(tmp, "stale_run"))
  with open(os.path.join(tmp, "stale_run", "config.json"), "w") as f:   # another version's
    f.write('{"data": {"bogus": 1}}')
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  cases = _cases(tmp)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    done = list(pool.map(lambda case: _run(case[0], case[1], env), cases))
  return list(zip(cases, done))


def test_at_least_a_dozen_cases_cover_every_job(outcomes):
  jobs = {job for (job, _, _), _ in outcomes}
  assert jobs == {"train", "rank", "index", "export", "evaluate", "recommend", "pipeline"}
  assert len(outcomes) >= 12


def test_each_bad_input_or_flag_ends_with_one_line_and_exit_status_2(outcomes):
  problems = []
  for (job, argv, texts), done in outcomes:
    lines = done.stderr.strip().splitlines()
    prefix = f"twotower-{job}: error: "
    ok = (done.returncode == 2 and len(lines) == 1 and lines[0].startswith(prefix) and
          all(text in lines[0] for text in texts) and done.stdout == "")
    if not ok:
      problems.append(f"twotower-{job} {' '.join(argv)}\n  exit {done.returncode}, wanted 2 "
                      f"and one line with {texts}; stderr:\n{done.stderr[-1500:]}")
  assert not problems, "\n".join(problems)


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  done = _run("train", [f"--workdir={tmp_path / 'run'}", f"--interactions={empty}",
                        "--debug"], dict(os.environ))
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr
  assert "Traceback (most recent call last)" in done.stderr and "DataError" in done.stderr
  assert lines[-1].startswith("twotower-train: error: ") and "empty.csv:1" in lines[-1]


def test_bad_input_leaves_no_run_directory_so_the_rerun_says_the_same_one_line(tmp_path):
  bad = tmp_path / "log.csv"
  bad.write_text("user_id,item_id,timestamp\r\n1,2,3\r\n1,3,x\r\n")   # CRLF; line 3 bad
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  argv = [f"--workdir={tmp_path / 'run'}", f"--interactions={bad}"]
  first, again = _run("train", argv, env), _run("train", argv, env)
  assert not (tmp_path / "run").exists()
  for done in (first, again):   # no "config.json differs" warning from the failed first run
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{bad}:3: field 'timestamp'" in done.stderr


def test_an_unexpected_exception_keeps_its_traceback_and_exit_status_1():
  code = ("from twotower.cli import errors\n"
          "def main():\n"
          "  return {}['a bug, not a user error']\n"
          "errors.run_job('twotower-demo', main)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 1, done.stderr
  assert "Traceback (most recent call last)" in done.stderr
  assert "KeyError" in done.stderr and "twotower-demo: error" not in done.stderr
