"""Cross-replica helpers: the loss and the training state see the global batch.

Under a tf.distribute strategy each replica encodes its slice of the batch; the candidates
are gathered so that every replica scores its rows against the global batch (the loss equals
the single-device loss), and the queue and frequency estimator receive the same global
entries on every replica.
"""
from __future__ import annotations

import tensorflow as tf

# Every replica writes the same global-batch values into such a variable; keep one write.
ONLY_FIRST_REPLICA = tf.VariableAggregation.ONLY_FIRST_REPLICA


def replica_context():
  """The replica context when running on several replicas, else None."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None
  return ctx


def gather_replicas(tensor: tf.Tensor) -> tf.Tensor:
  """All replicas' rows of ``tensor`` in replica order (the tensor itself on one device).

  TFRS ships a cross-replica concatenation helper but never calls it, so its in-batch
  negatives are per-replica.

  The identity pins the tensor to this replica's device: with one replica per process
  (MultiWorkerMirroredStrategy on CPUs or one GPU), all_gather sends the result to the
  input's device, and a tf.function input such as a batch's ids has none ("destinations
  can not be empty").
  """
  ctx = replica_context()
  return tensor if ctx is None else ctx.all_gather(tf.identity(tensor), axis=0)


def scatter_update(variable: tf.Variable, indices: tf.Tensor, updates: tf.Tensor) -> None:
  """variable[indices] = updates; mirrored variables cannot scatter in a replica context,
  so there the whole new value is assigned (the same on every replica)."""
  if replica_context() is None:
    variable.scatter_nd_update(indices, updates)
  else:
    variable.assign(tf.tensor_scatter_nd_update(variable, indices, updates))
