"""Every flag of every job explains itself; the ranking options are --ranking_ flags.

Each job defines its flags into absl's global FLAGS at import, and several define the same
names (--workdir), so each job's flags are read in a subprocess of its own.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from twotower import config as config_lib

JOBS = ("train", "rank", "pipeline", "index", "export", "evaluate", "recommend")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports a job's module and prints {flag: help} for the flags twotower defines (absl's own,
# --helpfull, --pdb..., are defined by absl's modules and left out).
_DUMP = """
import importlib, json, sys
from absl import flags
importlib.import_module("twotower.cli." + sys.argv[1])
helps = {}
for module, defined in flags.FLAGS.flags_by_module_dict().items():
  if module.startswith("twotower"):
    helps.update({flag.name: flag.help for flag in defined})
print(json.dumps(helps))
"""


def _python(code: str, *args: str) -> str:
  done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


@pytest.fixture(scope="module")
def job_helps():
  return {job: json.loads(_python(_DUMP, job)) for job in JOBS}


def _useless(name: str, help_text: str) -> bool:
  text = (help_text or "").strip()
  bare = text.rstrip(".")
  return (not text or bare == name or bare.lstrip("-") == name or
          re.fullmatch(r"[\w]+\.[\w]+", bare) is not None or len(text.split()) < 3)


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_of_the_job_has_real_help(job_helps, job):
  helps = job_helps[job]
  assert "debug" in helps and ("workdir" in helps or "export_dir" in helps)
  bad = {name: text for name, text in helps.items() if _useless(name, text)}
  assert not bad, f"twotower-{job}: flags without a real help text: {bad}"


def test_every_config_field_is_a_flag_of_train_and_pipeline(job_helps):
  fields = [f.name for kind in (config_lib.DataConfig, config_lib.ModelConfig,
                                config_lib.LossConfig, config_lib.TrainConfig)
            for f in dataclasses.fields(kind)]
  ranking = ["ranking_" + f.name for f in dataclasses.fields(config_lib.RankingConfig)]
  for job in ("train", "pipeline"):
    assert set(fields) <= set(job_helps[job]), job
  assert set(ranking) <= set(job_helps["pipeline"])
  assert set(ranking) <= set(job_helps["rank"])


def test_a_field_without_help_cannot_become_a_flag():
  from twotower.cli import flags as cli_flags

  @dataclasses.dataclass
  class Options:
    zz_undocumented_option: int = 1

  with pytest.raises(ValueError, match="--zz_undocumented_option .*has no help text"):
    cli_flags.define_dataclass_flags(Options, {})
  assert "zz_undocumented_option" not in cli_flags.FLAGS


# Parses a job's flags from argv and prints the ranking options the job would pass on.
_RANKING_OPTIONS = """
import importlib, json, sys
from twotower.cli import flags as cli_flags
importlib.import_module("twotower.cli." + sys.argv[1])
cli_flags.FLAGS(["job", *sys.argv[2:]])
inherit = ("seed", "progress") if sys.argv[1] == "pipeline" else ()
print(json.dumps(cli_flags.ranking_options_from_flags(inherit=inherit)))
"""


def _ranking_options(job: str, *argv: str) -> dict:
  return json.loads(_python(_RANKING_OPTIONS, job, "--workdir=unused", *argv))


def test_pipeline_passes_every_ranking_flag_to_the_ranking_stage():
  flagfile = os.path.join(ROOT, "experiments", "configs", "ranking.flags")
  options = _ranking_options("pipeline", f"--flagfile={flagfile}", "--ranking_npratio=8",
                             "--ranking_loss=softmax", "--ranking_layers=64,32",
                             "--batch_size=64", "--seed=5")
  names = {f.name for f in dataclasses.fields(config_lib.RankingConfig)}
  assert set(options) == names - {"seed", "progress"}   # those follow --seed, --progress
  assert options["npratio"] == 8 and options["loss"] == "softmax"
  assert options["layers"] == [64, 32]
  assert options["batch_size"] == config_lib.RankingConfig().batch_size   # not --batch_size
  assert _ranking_options("pipeline", "--ranking_seed=3")["seed"] == 3


def test_rank_keeps_the_unprefixed_names_as_aliases():
  flagfile = os.path.join(ROOT, "experiments", "configs", "ranking.flags")
  old = _ranking_options("rank", f"--flagfile={flagfile}", "--npratio=6", "--epochs=2")
  new = _ranking_options("rank", f"--flagfile={flagfile}", "--ranking_npratio=6",
                         "--ranking_epochs=2")
  assert old == new and old["npratio"] == 6 and old["epochs"] == 2 and "seed" in old


# Runs twotower-pipeline's main() with its stages stubbed, up to the ranking stage, and
# prints the options that stage receives.
_PIPELINE_UP_TO_RANKING = """
import json, sys
from twotower import workdir as workdir_lib
from twotower.cli import pipeline
from twotower.data import prepare as prepare_lib
from twotower.jobs import index as index_job, train as train_job, train_ranking as ranking_job

class Reached(Exception):
  pass

def rank(workdir, run=None, **options):
  raise Reached(options)

prepare_lib.load_raw = prepare_lib.prepare = lambda *args: None
train_job.train = lambda config, workdir, data=None: {"final": {"seed": config.train.seed}}
workdir_lib.load_trained = lambda workdir, data=None: None
index_job.build_index = lambda workdir, **options: {}
ranking_job.train_ranking = rank
pipeline.FLAGS(["twotower-pipeline", *sys.argv[1:]])
try:
  pipeline.main()
except Reached as reached:
  print(json.dumps(reached.args[0]))
"""


def test_pipeline_ranking_npratio_reaches_the_ranking_stage():
  received = json.loads(_python(_PIPELINE_UP_TO_RANKING, "--workdir=unused", "--noisolate_stages",
                                "--ranking_npratio=8", "--seed=7", "--noprogress"))
  assert received["npratio"] == 8
  assert received["seed"] == 7 and received["progress"] is False   # follow --seed, --progress
  assert received["num_candidates"] == config_lib.RankingConfig().num_candidates


@pytest.mark.parametrize("job", JOBS)
def test_helpshort_lists_the_jobs_own_flags_with_their_help(job_helps, job):
  done = subprocess.run([sys.executable, "-m", f"twotower.cli.{job}", "--helpshort"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", done.stdout, flags=re.MULTILINE))
  assert listed == set(job_helps[job]), set(job_helps[job]) ^ listed
  assert f"twotower-{job}:" in done.stdout   # the job module's docstring heads the usage
