"""log q estimators: the static table and Yi et al.'s streaming estimator."""
import numpy as np
import tensorflow as tf

from twotower.model.frequency import StaticFrequency, StreamingFrequencyEstimator


def test_static_frequency_is_log_of_share():
  freq = StaticFrequency(np.array([0, 1, 3, 0]))
  np.testing.assert_allclose(freq.log_q(tf.constant([1, 2, 3])).numpy(),
                             np.log([1 / 4, 3 / 4, 1 / 4]), rtol=1e-6)


def _stream_error(estimator, probs, steps, batch, rng, update):
  for _ in range(steps):
    update(tf.constant(rng.choice(len(probs), batch, p=probs)))
  got = estimator.probability(tf.constant(np.arange(len(probs)))).numpy()
  want = probs * batch                              # expected occurrences per step
  rel = np.abs(got / want - 1)
  head = np.argsort(-want)[:len(probs) // 10]
  return np.median(rel), np.median(rel[head])


def test_streaming_estimator_converges_and_tracks_a_distribution_switch():
  rng = np.random.default_rng(0)
  n, batch = 200, 64
  zipf = 1.0 / np.arange(1, n + 1)
  zipf /= zipf.sum()
  estimator = StreamingFrequencyEstimator(num_buckets=1024, num_hashes=2, learning_rate=0.02)
  update = tf.function(estimator.update)
  median, head = _stream_error(estimator, zipf, 2000, batch, rng, update)
  assert median < 0.15 and head < 0.15, (median, head)
  # The popularity order reverses mid-stream: the estimates must follow.
  median, head = _stream_error(estimator, zipf[::-1].copy(), 2000, batch, rng, update)
  assert median < 0.15 and head < 0.15, (median, head)


def test_streaming_estimator_state_survives_a_checkpoint(tmp_path):
  estimator = StreamingFrequencyEstimator(num_buckets=16)
  for ids in ([1, 2, 2], [2, 3], [1]):
    estimator.update(tf.constant(ids))
  tf.train.Checkpoint(f=estimator).write(str(tmp_path / "ckpt"))
  restored = StreamingFrequencyEstimator(num_buckets=16)
  tf.train.Checkpoint(f=restored).read(str(tmp_path / "ckpt"))
  ids = tf.constant([1, 2, 3, 4])
  np.testing.assert_allclose(restored.probability(ids).numpy(),
                             estimator.probability(ids).numpy())
  assert int(restored.step) == 3
