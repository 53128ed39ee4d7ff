"""twotower: two-tower retrieval with cross-batch negatives.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch must be set
before anything imports TensorFlow; importing this package first guarantees it.

The public API, imported on first use: ``Config``, ``train(config, workdir)``,
``train_ranking(workdir, ...)``, ``evaluate_workdir(workdir)``, ``build_index(workdir)``,
``export(workdir)`` (the workdir-level jobs, twotower.jobs) and ``Recommender``.
"""
import importlib as _importlib
import os as _os
import sys as _sys
import types as _types

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
# Public functions named like a submodule: ``twotower.train`` is also the training
# subpackage (``twotower.train.loop``), ``twotower.export`` the export module. Whichever
# import binds the submodule first, it binds it callable, so one object is both.
_CALLABLE_SUBMODULES = ("train", "export")

__all__ = sorted(_API)


def _resolve(name: str):
  module, attribute = _API[name]
  return getattr(_importlib.import_module(module), attribute)


class _CallableModule(_types.ModuleType):
  """A submodule that shares its name with a public function: calling it calls that."""

  def __call__(self, *args, **kwargs):
    return _resolve(self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(_types.ModuleType):
  """The package module: the import system binds each submodule with setattr, which here
  makes the ones in _CALLABLE_SUBMODULES callable."""

  def __setattr__(self, name, value):
    if (name in _CALLABLE_SUBMODULES and isinstance(value, _types.ModuleType)
        and value.__name__ == f"{__name__}.{name}"):
      value.__class__ = _CallableModule
    super().__setattr__(name, value)


def __getattr__(name: str):
  if name in _CALLABLE_SUBMODULES:
    return _importlib.import_module(f"{__name__}.{name}")   # bound callable on import
  if name in _API:
    value = globals()[name] = _resolve(name)
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_API))


_sys.modules[__name__].__class__ = _Package
