"""Free-text features: raw strings -> tokens, one definition for training and serving.

A text value is lower-cased (Unicode-aware), split on runs of non-word characters (a word
character is a Unicode letter, digit or '_') and cut to its first ``max_tokens`` tokens:
an over-long text is truncated, never an error. The same TensorFlow ops tokenise the
feature tables once when a run prepares its data and run inside the exported SavedModels,
so a title is split the same way in training and at serving (``tests/test_text.py``).
Token ids then follow the feature's ``Vocabulary`` (StringLookup's layout, OOV buckets).
"""
from __future__ import annotations

import numpy as np

# RE2 syntax (tf.strings.regex_replace): anything but letters, digits and '_'.
NON_WORD = r"[^\p{L}\p{N}_]+"
# Rows tokenised per TensorFlow call when preparing a table: bounds the ragged tensor.
_CHUNK_ROWS = 65_536


def tokenize_tf(strings, max_tokens: int):
  """[B] strings -> [B, max_tokens] string tokens, '' padded (in-graph; any TF context)."""
  import tensorflow as tf
  lowered = tf.strings.lower(strings, encoding="utf-8")
  spaced = tf.strings.strip(tf.strings.regex_replace(lowered, NON_WORD, " "))
  return tf.strings.split(spaced, " ").to_tensor(default_value="", shape=[None, max_tokens])


def tokenize(values: np.ndarray, max_tokens: int) -> np.ndarray:
  """Object array [n, max_tokens] of the tokens of ``values`` (numpy in, numpy out)."""
  import tensorflow as tf
  values = np.asarray(values, dtype=object)
  out = np.full((len(values), max_tokens), "", dtype=object)
  for start in range(0, len(values), _CHUNK_ROWS):
    chunk = values[start:start + _CHUNK_ROWS].astype(str)
    tokens = tokenize_tf(tf.constant(chunk, tf.string), max_tokens).numpy()
    out[start:start + len(chunk)] = np.char.decode(tokens.astype(np.bytes_), "utf-8")
  return out
