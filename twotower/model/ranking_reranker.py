"""Serving side of the ranking head: scores candidates with its raw-string SavedModel
(written by model/ranking_export.py), needing nothing but TensorFlow.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from twotower.data.pipeline import HISTORY

SAVED_MODEL_DIR = "ranking_model"


class SavedModelReranker:
  """Serving adapter: ``reranker(users, candidate_ids) -> scores`` over the SavedModel.

  ``users`` are raw feature dicts as in ``Recommender.recommend`` (``user_id``, optional
  ``history`` list, feature values; missing ones become ''); ``candidate_ids`` may differ
  in length per user, padding scores -inf. Needs only TensorFlow.
  """

  def __init__(self, path: str):
    if os.path.isdir(os.path.join(path, SAVED_MODEL_DIR)):
      path = os.path.join(path, SAVED_MODEL_DIR)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise FileNotFoundError(f"{path} is not a ranking SavedModel (no saved_model.pb)")
    self.path = path
    self._module = tf.saved_model.load(path)
    self._fn = self._module.signatures["serving_default"]
    self.history_length = int(self._module.history_length.numpy())
    count = int(self._module.num_user_features.numpy())
    names = self._module.user_feature_names.numpy()[:count]
    self.feature_names = [n.decode("utf-8") for n in names]

  def __call__(self, users: Sequence[dict], candidate_ids: Sequence[Sequence[str]]) -> np.ndarray:
    if len(users) != len(candidate_ids):
      raise ValueError(f"{len(users)} users but {len(candidate_ids)} candidate lists")
    width = max((len(c) for c in candidate_ids), default=0)
    if not users or width == 0:
      return np.zeros((len(users), width), np.float32)
    items = np.full((len(users), width), "", dtype=object)
    history = np.full((len(users), self.history_length), "", dtype=object)
    for row, (user, candidates) in enumerate(zip(users, candidate_ids)):
      items[row, :len(candidates)] = [str(c) for c in candidates]
      recent = [str(h) for h in (user.get(HISTORY) or ())][-self.history_length:]
      if recent:
        history[row, -len(recent):] = recent
    inputs = {"user_id": tf.constant([_raw(u.get("user_id")) for u in users]),
              HISTORY: tf.constant(history.astype(str)),
              "item_ids": tf.constant(items.astype(str))}
    for name in self.feature_names:
      inputs[name] = tf.constant([_raw(u.get(name)) for u in users])
    return self._fn(**inputs)["scores"].numpy()


def _raw(value) -> str:
  """A raw feature value as the SavedModel wants it: lists joined by spaces, None -> ''."""
  if value is None:
    return ""
  if isinstance(value, (list, tuple, np.ndarray)):
    return " ".join(str(v) for v in value)
  return str(value)
