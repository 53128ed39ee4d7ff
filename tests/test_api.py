"""The package's public API: every name importable from ``twotower``, resolved on first use,
and each the very job function or class it names."""
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
  assert twotower.train is train_job.train
  assert twotower.export is export_job.export
  assert set(twotower.__all__) == {"Config", "Recommender", "build_index", "evaluate_workdir",
                                   "export", "train", "train_ranking"}
  assert set(twotower.__all__) <= set(dir(twotower))


def test_no_public_name_is_shadowed_by_a_submodule():
  """Importing every submodule first (as a user's other imports may) leaves each public name
  the job function: a submodule of that name would be bound over it by the import system."""
  out = _python("import pkgutil, importlib, twotower\n"
                "for m in pkgutil.walk_packages(twotower.__path__, 'twotower.'):\n"
                "  if not m.name.startswith('twotower.cli.'):\n"
                "    importlib.import_module(m.name)\n"
                "print(sorted(n for n in twotower.__all__ if not callable(getattr(twotower, n))))")
  assert out.split("\n")[0] == "[]"


def test_train_and_export_call_their_jobs(monkeypatch):
  calls = []
  monkeypatch.setattr(train_job, "train", lambda *a, **k: calls.append(("train", a, k)) or 1)
  monkeypatch.setattr(export_job, "export", lambda *a, **k: calls.append(("export", a, k)) or 2)
  for name in ("train", "export"):
    monkeypatch.delitem(vars(twotower), name, raising=False)   # resolve again, patched
  assert twotower.train("config", "workdir") == 1
  assert twotower.export("workdir", include_ranking=False) == 2
  assert calls == [("train", ("config", "workdir"), {}),
                   ("export", ("workdir",), {"include_ranking": False})]
