"""Flagfiles: experiments/configs/*.flags parse against the jobs that take them, a flagfile
may include another (later lines win), and every line's value reaches the job's config.

Each job's flags are parsed in a subprocess, as its command line would be: the jobs define
their flags in absl's global registry at import, and twotower-rank's aliases (``--epochs`` for
``--ranking_epochs``) would clash with twotower-train's flags in one process.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags")))
# Which jobs take which file: ranking flags go to the head's jobs, the rest to training's.
JOBS = {"ranking.flags": ("rank", "pipeline")}
RETRIEVAL_JOBS = ("train", "pipeline")

# Parses argv lists (JSON on stdin) with one job's flags; for each, the named flags' values
# next to what their own parser makes of the raw text, and the config the job would run.
_PARSE = r"""
import importlib, json, sys
from absl import flags
job = sys.argv[1]
importlib.import_module("twotower.cli." + job)
from twotower.cli import flags as cli_flags
FLAGS = flags.FLAGS
out = []
for request in json.load(sys.stdin):
  FLAGS.unparse_flags()
  FLAGS(["twotower-" + job, "--workdir=unused", *request["argv"]])
  values = {name: [FLAGS[name].value, FLAGS[name].parser.parse(raw)]
            for name, raw in request["expect"].items()}
  result = {"values": values}
  if job != "rank":
    result["config"] = json.loads(cli_flags.config_from_flags().to_json())
  if job != "train":
    result["ranking"] = cli_flags.ranking_options_from_flags()
  out.append(result)
print(json.dumps(out, default=list))
"""


def _parse(job: str, requests: list) -> list:
  done = subprocess.run([sys.executable, "-c", _PARSE, job], input=json.dumps(requests),
                        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout)


def _lines(path: str) -> dict:
  """name -> raw value of a flagfile's lines, nested flagfiles expanded in place (later
  lines win, as absl reads them); ``--noX`` is X=false."""
  values = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      assert line.startswith("--"), f"{path}: {line!r} is not a flag"
      name, sep, raw = line[2:].partition("=")
      if name == "flagfile":
        values.update(_lines(os.path.join(REPO, raw) if not os.path.isabs(raw) else raw))
      elif sep:
        values[name] = raw
      elif name.startswith("no"):
        values[name[2:]] = "false"
      else:
        values[name] = "true"
  return values


def _normal(value):
  """Flag and config spellings of a list (["256", "128"] and (256, 128)) compare equal."""
  if isinstance(value, (list, tuple)):
    return [int(v) if str(v).lstrip("-").isdigit() else v for v in value]
  return value


def _config_value(result: dict, name: str):
  """The config field a flag name sets: a section field, or a RankingConfig option."""
  if name.startswith("ranking_") and "ranking" in result:
    return result["ranking"][name[len("ranking_"):]]
  for section in result.get("config", {}).values():
    if name in section:
      return section[name]
  return result["ranking"][name]       # twotower-rank's unprefixed alias


def _check(path: str, result: dict) -> None:
  for name, (value, parsed) in result["values"].items():
    assert value == parsed, f"{os.path.basename(path)}: --{name} is {value!r}, not {parsed!r}"
    assert _normal(_config_value(result, name)) == _normal(value), (path, name)


@pytest.mark.parametrize("job", ["train", "rank", "pipeline"])
def test_experiment_configs_parse_against_their_jobs(job):
  paths = [p for p in CONFIGS
           if job in JOBS.get(os.path.basename(p), RETRIEVAL_JOBS)]
  assert paths, f"no config in experiments/configs is for twotower-{job}"
  expected = [_lines(p) for p in paths]
  results = _parse(job, [{"argv": [f"--flagfile={p}"], "expect": e}
                         for p, e in zip(paths, expected)])
  for path, want, result in zip(paths, expected, results):
    assert set(result["values"]) == set(want)
    _check(path, result)


def test_every_experiment_config_belongs_to_a_job():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {"movielens.flags", "in_batch.flags", "ranking.flags"} <= names


def test_nested_flagfile_later_lines_win_and_reach_the_config(tmp_path):
  inner = tmp_path / "inner.flags"
  inner.write_text("# shared settings\n--batch_size=64\n--temperature=0.2\n"
                   "--user_layers=48,24\n")
  outer = tmp_path / "outer.flags"
  outer.write_text(f"--flagfile={inner}\n--temperature=0.07\n--noqueue_centering\n")
  result, = _parse("train", [{"argv": [f"--flagfile={outer}", "--epochs=3"],
                              "expect": {"batch_size": "64", "temperature": "0.07",
                                         "queue_centering": "false", "epochs": "3",
                                         "user_layers": "48,24"}}])
  _check(str(outer), result)
  config = result["config"]
  assert config["train"]["batch_size"] == 64            # from the included file
  assert config["loss"]["temperature"] == 0.07          # the including file overrides it
  assert config["loss"]["queue_centering"] is False     # --noqueue_centering
  assert config["model"]["user_layers"] == [48, 24]
  assert config["train"]["epochs"] == 3                 # the command line after the file


def test_in_batch_config_is_movielens_without_the_queue():
  """in_batch.flags includes movielens.flags (a path relative to the repository root, where
  the experiments run) and changes only the queue."""
  movielens, in_batch = _parse("train", [
      {"argv": [f"--flagfile=experiments/configs/{name}.flags"], "expect": {}}
      for name in ("movielens", "in_batch")])
  assert in_batch["config"]["loss"]["queue_size"] == 0
  assert movielens["config"]["loss"]["queue_size"] == -1
  for section in ("data", "model", "train"):
    assert in_batch["config"][section] == movielens["config"][section]
