"""twotower: two-tower retrieval with cross-batch negatives.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch must be set
before anything imports TensorFlow; importing this package first guarantees it.

The public API, imported on first use: ``Config``, ``train(config, workdir)``,
``train_ranking(workdir, ...)``, ``evaluate_workdir(workdir)``, ``build_index(workdir)``,
``export(workdir)`` (the workdir-level jobs, twotower.jobs) and ``Recommender``.
"""
import importlib as _importlib
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up lines (the cuInit error on machines without a GPU, logged at
# ERROR level, oneDNN notices) say nothing about the job: silence them unless the user set
# TF_CPP_MIN_LOG_LEVEL (or passes a job --debug). Python-side warnings are not affected.
_TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


# -- public API ----------------------------------------------------------------------------
# Resolved on first use (module __getattr__), so ``import twotower`` stays cheap and has set
# the environment above before anything imports TensorFlow.
_API = {
    "Config": ("twotower.config", "Config"),
    "train": ("twotower.jobs.train", "train"),
    "train_ranking": ("twotower.jobs.train_ranking", "train_ranking"),
    "evaluate_workdir": ("twotower.jobs.evaluate", "evaluate_workdir"),
    "build_index": ("twotower.jobs.index", "build_index"),
    "export": ("twotower.jobs.export", "export"),
    "Recommender": ("twotower.serving", "Recommender"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
  if name in _API:
    module, attribute = _API[name]
    value = globals()[name] = getattr(_importlib.import_module(module), attribute)
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_API))
