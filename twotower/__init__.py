"""twotower: two-tower retrieval with cross-batch negatives.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch must be set
before anything imports TensorFlow; importing this package first guarantees it.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
