"""twotower: two-tower retrieval with cross-batch negatives.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch must be set
before anything imports TensorFlow; importing this package first guarantees it.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up lines (the cuInit error on machines without a GPU, logged at
# ERROR level, oneDNN notices) say nothing about the job: silence them unless the user set
# TF_CPP_MIN_LOG_LEVEL (or passes a job --debug). Python-side warnings are not affected.
_TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
