"""Mixed Negative Sampling: the sampler, the mixture logQ, the loss, and a training run."""
import numpy as np
import pytest
import tensorflow as tf

from twotower.config import LossConfig
from twotower.model.frequency import StaticFrequency
from twotower.model.mixed_negatives import MixedNegativeSampler
from twotower.model.retrieval import MASKED_LOGIT, CrossBatchSoftmax

CORPUS = np.arange(2, 42, dtype=np.int32)      # ids 0 and 1: padding and OOV rows
COUNTS = np.arange(1, 41) ** 2


def _sampler(distribution, num_samples=50_000):
  return MixedNegativeSampler(num_samples, distribution, CORPUS, COUNTS, vocab_size=42, seed=3)


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_samples_follow_the_distribution_and_stay_in_the_corpus(distribution):
  sampler = _sampler(distribution)
  ids = sampler.sample(tf.constant(7, tf.int64)).numpy()
  assert set(ids) <= set(CORPUS)
  # Popularity sampling is count^0.75 (as the flag's help says): the number, not the constant.
  weights = np.ones(40) if distribution == "uniform" else COUNTS ** 0.75
  want = weights / weights.sum()
  got = np.bincount(ids - 2, minlength=40) / len(ids)
  np.testing.assert_allclose(got, want, atol=0.006)
  np.testing.assert_allclose(np.exp(sampler.log_prob(tf.constant(CORPUS)).numpy()), want,
                             rtol=1e-5)
  assert sampler.log_prob(tf.constant([0, 1])).numpy().max() == -np.inf


def test_sampling_is_a_function_of_the_step():
  sampler = _sampler("uniform", 64)
  a, b = (sampler.sample(tf.constant(s, tf.int64)).numpy() for s in (5, 5))
  np.testing.assert_array_equal(a, b)                          # resumable, replica-identical
  assert (a != sampler.sample(tf.constant(6, tf.int64)).numpy()).any()


def test_mixture_log_q_is_expected_occurrences_among_the_candidates():
  counts = np.zeros(42)
  counts[2:] = COUNTS
  frequency = StaticFrequency(counts)
  sampler = _sampler("uniform", 16)
  ids = tf.constant([2, 10, 41])
  batch = 8
  got = sampler.mixture_log_q(frequency.log_rate(ids, batch), ids).numpy()
  p = counts[[2, 10, 41]] / counts.sum()
  np.testing.assert_allclose(got, np.log(batch * p + 16 / 40), rtol=1e-5)


def test_loss_scores_mixed_negatives_and_masks_their_accidental_hits():
  rng = np.random.default_rng(0)
  unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
      rng.normal(size=(n, 4)).astype(np.float32))
  query, cand, neg = unit(3), unit(3), unit(2)
  ids, neg_ids = np.array([5, 6, 7]), np.array([6, 9])
  log_q, neg_log_q = np.array([-1.0, -2.0, -3.0]), np.array([-0.5, -4.0])
  config = LossConfig(temperature=0.5)
  task = CrossBatchSoftmax(config)
  got = task(query, cand, tf.constant(ids), tf.constant(log_q, tf.float32),
             negatives=(neg, tf.constant(neg_ids), tf.constant(neg_log_q, tf.float32))).numpy()
  logits = np.concatenate([query @ cand.T, query @ neg.T], axis=1) / 0.5
  logits -= np.concatenate([log_q, neg_log_q])[None, :]
  logits[1, 3] = MASKED_LOGIT          # negative id 6 is row 1's positive
  want = np.mean([np.log(np.exp(row).sum()) - row[b] for b, row in enumerate(logits)])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_training_with_mixed_negatives_beats_most_popular(tmp_path):
  from conftest import tiny_config

  from twotower.jobs import train as train_job
  config = tiny_config()
  config.train.epochs = 3
  config.loss.mixed_negatives = 64
  config.loss.mixed_negatives_distribution = "popularity"
  final = train_job.train(config, str(tmp_path))["final"]
  assert final["test"]["recall@10"] > final["most_popular_test"]["recall@10"]
