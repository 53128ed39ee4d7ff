"""The package's public API: every name importable from ``twotower``, lazily, and the two
names shared with a submodule (``train``, ``export``) both callable and still modules."""
import os
import subprocess
import sys

import twotower
from twotower import config, serving
from twotower.jobs import evaluate as evaluate_job
from twotower.jobs import export as export_job
from twotower.jobs import index as index_job
from twotower.jobs import train as train_job
from twotower.jobs import train_ranking as train_ranking_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> str:
  """Runs ``code`` in a fresh interpreter (import order matters here); returns stdout."""
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_import_is_cheap_and_sets_the_environment_first():
  out = _python("import os, sys, twotower\n"
                "print(sorted(m for m in ('tensorflow', 'tf_keras', 'numpy', 'twotower.jobs') "
                "if m in sys.modules))\n"
                "print(os.environ['TF_USE_LEGACY_KERAS'])")
  assert out.split("\n")[:2] == ["[]", "1"]


def test_every_public_name_is_its_job_or_class():
  assert twotower.Config is config.Config
  assert twotower.Recommender is serving.Recommender
  assert twotower.evaluate_workdir is evaluate_job.evaluate_workdir
  assert twotower.build_index is index_job.build_index
  assert twotower.train_ranking is train_ranking_job.train_ranking
  assert twotower.train is sys.modules["twotower.train"]   # the subpackage, callable
  assert twotower.export is sys.modules["twotower.export"]
  assert callable(twotower.train) and callable(twotower.export)
  assert set(twotower.__all__) == {"Config", "Recommender", "build_index", "evaluate_workdir",
                                   "export", "train", "train_ranking"}
  assert set(twotower.__all__) <= set(dir(twotower))


def test_train_and_export_call_their_jobs(monkeypatch):
  calls = []
  monkeypatch.setattr(train_job, "train", lambda *a, **k: calls.append(("train", a, k)) or 1)
  monkeypatch.setattr(export_job, "export", lambda *a, **k: calls.append(("export", a, k)) or 2)
  assert twotower.train("config", "workdir") == 1
  assert twotower.export("workdir", include_ranking=False) == 2
  assert calls == [("train", ("config", "workdir"), {}),
                   ("export", ("workdir",), {"include_ranking": False})]
  from twotower.train import loop  # the subpackage's modules stay importable
  assert twotower.train.loop is loop


def test_a_submodule_imported_before_the_package_name_is_still_callable():
  out = _python("import twotower.train.loop\n"
                "from twotower import export as export_module\n"
                "import twotower\n"
                "print(callable(twotower.train), twotower.train.loop.__name__)\n"
                "print(callable(export_module), export_module.MANIFEST)")
  assert out.split("\n")[:2] == ["True twotower.train.loop", "True manifest.json"]
