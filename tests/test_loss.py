"""The cross-batch queue and the sampled-softmax loss against numpy references."""
import numpy as np
import pytest
import tensorflow as tf

from twotower.config import LossConfig
from twotower.model.negatives import EMPTY_ID, CrossBatchQueue
from twotower.model.retrieval import (
  MASKED_LOGIT,
  CrossBatchSoftmax,
  membership_mask,
  resolve_query_memory_size,
  resolve_queue_size,
)


def _unit(rng, n, d):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_queue_is_fifo_and_keeps_the_newest():
  q = CrossBatchQueue(size=5, dim=2)
  for start in (0, 3, 6):
    ids = np.arange(start, start + 3, dtype=np.int32)
    q.enqueue(tf.constant(np.stack([ids, ids], 1).astype(np.float32)), tf.constant(ids),
              tf.constant(-ids.astype(np.float32)))
  emb, ids, log_q = (t.numpy() for t in q.ordered())
  np.testing.assert_array_equal(ids, [4, 5, 6, 7, 8])          # oldest first, 0..3 evicted
  np.testing.assert_array_equal(emb[:, 0], [4, 5, 6, 7, 8])
  np.testing.assert_array_equal(log_q, [-4, -5, -6, -7, -8])
  assert int(q.count) == 9


def test_queue_larger_batch_than_queue_keeps_last_entries():
  q = CrossBatchQueue(size=3, dim=1)
  ids = np.arange(7, dtype=np.int32)
  q.enqueue(tf.constant(ids[:, None].astype(np.float32)), tf.constant(ids), tf.zeros(7))
  np.testing.assert_array_equal(q.ordered()[1].numpy(), [4, 5, 6])


def test_empty_queue_slots_are_masked_and_loss_equals_in_batch():
  rng = np.random.default_rng(0)
  query, cand = _unit(rng, 4, 3), _unit(rng, 4, 3)
  ids = tf.constant([1, 2, 3, 4])
  log_q = tf.constant([-1.0, -2.0, -3.0, -4.0])
  in_batch = CrossBatchSoftmax(LossConfig(queue_warmup_steps=0))
  with_queue = CrossBatchSoftmax(LossConfig(queue_warmup_steps=0), CrossBatchQueue(6, 3))
  np.testing.assert_allclose(in_batch(query, cand, ids, log_q).numpy(),
                             with_queue(query, cand, ids, log_q).numpy(), rtol=1e-6)
  logits = with_queue.logits(query, cand, ids, log_q).numpy()
  assert (logits[:, 4:] == MASKED_LOGIT).all()


def test_drift_warmup_keeps_a_full_queue_off_until_enabled():
  rng = np.random.default_rng(1)
  query, cand = _unit(rng, 4, 3), _unit(rng, 4, 3)
  ids, log_q = tf.constant([1, 2, 3, 4]), tf.constant([-1.0, -2.0, -3.0, -4.0])
  queue = CrossBatchQueue(4, 3)
  queue.enqueue(tf.constant(_unit(rng, 4, 3)), tf.constant([5, 6, 7, 8]), log_q)
  task = CrossBatchSoftmax(LossConfig(queue_warmup_steps=0, queue_warmup_drift=0.01), queue)
  step = tf.constant(10, tf.int64)
  assert (task.logits(query, cand, ids, log_q, step=step).numpy()[:, 4:] == MASKED_LOGIT).all()
  task.queue_enabled.assign(True)   # what the loop does once the drift is small enough
  assert (task.logits(query, cand, ids, log_q, step=step).numpy()[:, 4:] > MASKED_LOGIT).all()


def _reference_loss(query, cand, ids, log_q, q_emb, q_ids, q_log_q, history, temperature,
                    use_queue=True):
  all_emb = np.concatenate([cand, q_emb]) if use_queue else cand
  all_ids = np.concatenate([ids, q_ids]) if use_queue else ids
  all_lq = np.concatenate([log_q, q_log_q]) if use_queue else log_q
  losses = []
  for b in range(len(query)):
    logits = query[b] @ all_emb.T / temperature - all_lq
    for c in range(len(all_ids)):
      if c == b:
        continue
      if all_ids[c] == ids[b] or all_ids[c] == EMPTY_ID or all_ids[c] in set(history[b]) - {0}:
        logits[c] = -np.inf
    m = logits.max()
    losses.append(-(logits[b] - m - np.log(np.exp(logits - m).sum())))
  return np.mean(losses)


@pytest.mark.parametrize("step,use_queue", [(10, True), (2, False)])
def test_loss_matches_reference_with_logq_hits_history_and_warmup(step, use_queue):
  rng = np.random.default_rng(1)
  b, m, d = 6, 5, 4
  query, cand = _unit(rng, b, d), _unit(rng, b, d)
  ids = np.array([1, 2, 3, 2, 5, 6], np.int32)           # an in-batch accidental hit (2)
  log_q = rng.normal(size=b).astype(np.float32)
  q_emb = _unit(rng, m, d)
  q_ids = np.array([3, EMPTY_ID, 9, 5, 8], np.int32)     # hits on 3 and 5, one empty slot
  q_log_q = rng.normal(size=m).astype(np.float32)
  history = np.array([[0, 9], [0, 0], [6, 7], [0, 1], [0, 0], [8, 8]], np.int32)
  queue = CrossBatchQueue(m, d)
  queue.embeddings.assign(q_emb)
  queue.ids.assign(q_ids)
  queue.log_q.assign(q_log_q)
  task = CrossBatchSoftmax(LossConfig(temperature=0.2, queue_warmup_steps=5), queue)
  got = task(tf.constant(query), tf.constant(cand), tf.constant(ids), tf.constant(log_q),
             history=tf.constant(history), step=tf.constant(step, tf.int64)).numpy()
  want = _reference_loss(query, cand, ids, log_q, q_emb, q_ids, q_log_q, history, 0.2,
                         use_queue=use_queue)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_decoupled_queue_trains_the_user_tower_only():
  """The query gets the full (in-batch + queue) softmax's gradient; the candidates get the
  in-batch softmax's, exactly as without a queue."""
  rng = np.random.default_rng(5)
  b, m, d = 5, 7, 3
  query, cand = tf.constant(_unit(rng, b, d)), tf.constant(_unit(rng, b, d))
  ids, log_q = tf.constant([1, 2, 3, 2, 5]), tf.constant(rng.normal(size=b).astype(np.float32))
  history = tf.constant([[0, 9], [0, 0], [6, 3], [0, 1], [0, 0]])

  def gradients(loss_config, queue):
    task = CrossBatchSoftmax(loss_config, queue)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([query, cand])
      loss = task(query, cand, ids, log_q, history=history, step=tf.constant(9, tf.int64))
    return loss.numpy(), tape.gradient(loss, query).numpy(), tape.gradient(loss, cand).numpy()

  queue = CrossBatchQueue(m, d)
  queue.enqueue(tf.constant(_unit(rng, m, d)), tf.constant([3, 9, 8, 7, 6, 5, 4]),
                tf.constant(rng.normal(size=m).astype(np.float32)))
  joint = gradients(LossConfig(queue_warmup_steps=0), queue)
  in_batch = gradients(LossConfig(), None)
  decoupled = gradients(LossConfig(queue_warmup_steps=0, queue_decoupled=True), queue)
  np.testing.assert_allclose(decoupled[0], joint[0] + in_batch[0], rtol=1e-5)
  np.testing.assert_allclose(decoupled[1], joint[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(decoupled[2], in_batch[2], rtol=1e-5, atol=1e-6)
  assert np.abs(joint[2] - in_batch[2]).max() > 1e-3     # the queue does change the joint one


def test_query_memory_adds_the_batch_to_remembered_softmaxes():
  """Loss = in-batch mean + sum over remembered queries of log(1 + sum_c exp(l_uc) / Z_u) / B,
  with a remembered query's own positive never its negative, empty slots and the warm-up
  ignored; only the candidates get its gradient."""
  rng = np.random.default_rng(6)
  b, m, d, temperature = 4, 5, 3, 0.3
  query, cand = _unit(rng, b, d), _unit(rng, b, d)
  ids, log_q = np.array([1, 2, 3, 4]), rng.normal(size=b).astype(np.float32)
  memory = CrossBatchQueue(m, d, name="query_memory")
  mem_q, mem_ids = _unit(rng, m - 1, d), np.array([2, 7, 3, 9])     # one slot stays empty
  mem_z = rng.normal(size=m - 1).astype(np.float32)
  memory.enqueue(tf.constant(mem_q), tf.constant(mem_ids), tf.constant(mem_z))
  config = LossConfig(temperature=temperature, queue_warmup_steps=3)
  task = CrossBatchSoftmax(config, query_memory=memory)
  plain = CrossBatchSoftmax(config)
  args = (tf.constant(query), tf.constant(cand), tf.constant(ids), tf.constant(log_q))
  extra = 0.0
  for u in range(m - 1):
    logits = mem_q[u] @ cand.T / temperature - log_q
    logits = logits[ids != mem_ids[u]]
    extra += np.logaddexp(mem_z[u], np.log(np.exp(logits).sum())) - mem_z[u]
  want = plain(*args).numpy() + extra / b
  got = task(*args, step=tf.constant(3, tf.int64)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(task(*args, step=tf.constant(2, tf.int64)).numpy(),
                             plain(*args).numpy(), rtol=1e-6)        # still warming up
  query_t, cand_t = args[:2]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([query_t, cand_t])
    with_memory, without = task(*args, step=tf.constant(3, tf.int64)), plain(*args)
  np.testing.assert_allclose(tape.gradient(with_memory, query_t).numpy(),
                             tape.gradient(without, query_t).numpy(), rtol=1e-5, atol=1e-6)
  assert np.abs(tape.gradient(with_memory, cand_t).numpy()
                - tape.gradient(without, cand_t).numpy()).max() > 1e-3


def test_logq_off_ignores_probabilities():
  rng = np.random.default_rng(2)
  query, cand = _unit(rng, 3, 2), _unit(rng, 3, 2)
  ids = tf.constant([1, 2, 3])
  task = CrossBatchSoftmax(LossConfig(logq=False))
  a = task(query, cand, ids, tf.constant([0.0, -5.0, -9.0])).numpy()
  b = task(query, cand, ids, tf.constant([-1.0, -1.0, -1.0])).numpy()
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_membership_mask_matches_set_membership():
  rng = np.random.default_rng(3)
  history = rng.integers(0, 40, (16, 7)).astype(np.int32)
  history[:, :3] = 0
  cands = rng.integers(0, 40, 50).astype(np.int32)
  want = np.array([[c in set(h[h != 0]) for c in cands] for h in history])
  got = membership_mask(tf.constant(history), tf.constant(cands)).numpy()
  np.testing.assert_array_equal(got, want)


def test_centering_leaves_in_batch_loss_unchanged():
  rng = np.random.default_rng(4)
  query, cand = _unit(rng, 5, 3), _unit(rng, 5, 3)
  ids, log_q = tf.constant([1, 2, 3, 4, 5]), tf.zeros(5)
  task = CrossBatchSoftmax(LossConfig(queue_warmup_steps=0), CrossBatchQueue(5, 3))
  np.testing.assert_allclose(task(query, cand, ids, log_q).numpy(),
                             task(query, task.center(tf.constant(cand)), ids, log_q).numpy(),
                             rtol=1e-5)


def test_center_subtracts_the_batch_mean_only_with_a_queue_and_centering_on():
  x = tf.constant(np.random.default_rng(5).normal(1.0, 1.0, (6, 3)).astype(np.float32))
  centered = CrossBatchSoftmax(LossConfig(), CrossBatchQueue(6, 3)).center(x).numpy()
  np.testing.assert_allclose(centered, x.numpy() - x.numpy().mean(0), atol=1e-6)
  np.testing.assert_allclose(centered.mean(0), 0.0, atol=1e-6)
  for task in (CrossBatchSoftmax(LossConfig(queue_centering=False), CrossBatchQueue(6, 3)),
               CrossBatchSoftmax(LossConfig())):      # no queue: nothing to protect
    np.testing.assert_array_equal(task.center(x).numpy(), x.numpy())


@pytest.mark.parametrize("centering", [True, False])
def test_queue_stores_the_step_candidates_minus_their_mean(centering):
  """What a training step enqueues: the item tower's outputs for the batch, centered unless
  the config says not to (--noqueue_centering reaching it: tests/test_flagfiles.py)."""
  from conftest import tiny_config

  from twotower.data import pipeline
  from twotower.data import prepare as prepare_lib
  from twotower.model.retrieval import encode_each_item_once
  from twotower.training import loop
  config = tiny_config()
  config.loss.queue_size, config.loss.queue_warmup_steps = 256, 0
  config.loss.queue_centering = centering
  data = prepare_lib.prepare(prepare_lib.load_raw(config.data), config.data)
  model, _ = loop.build_model(data, config)
  batch = next(iter(pipeline.training_dataset(data, batch_size=256, seed=0,
                                              history_length=config.data.history_length)))
  raw = encode_each_item_once(model.item_tower, batch["item"], training=True).numpy()
  assert np.linalg.norm(raw.mean(0)) > 0.05          # a shared component to remove
  model.train_step(batch)
  stored, ids, _ = (t.numpy() for t in model.task.queue.ordered())
  np.testing.assert_array_equal(ids, batch["item"]["item_id"].numpy())
  want = raw - raw.mean(0) if centering else raw
  np.testing.assert_allclose(stored, want, atol=1e-5)
  if centering:
    np.testing.assert_allclose(stored.mean(0), 0.0, atol=1e-5)


def test_queue_size_auto_is_on_with_a_text_encoder_and_capped_by_catalogue():
  auto = LossConfig(queue_size=-1)
  assert resolve_queue_size(auto, 256, 100_000, encoder_items=True) == 2048
  assert resolve_queue_size(auto, 256, 4000, encoder_items=True) == 500
  assert resolve_queue_size(auto, 512, 1682, encoder_items=True) == 0   # MovieLens-100K
  # Id and token towers: the queue costs more than a larger batch, so auto is in-batch.
  assert resolve_queue_size(auto, 1024, 1_000_000) == 0
  assert resolve_queue_size(LossConfig(queue_size=0), 256, 100_000) == 0
  assert resolve_queue_size(LossConfig(queue_size=300), 256, 1000) == 300


def test_query_memory_size_follows_the_queue_and_needs_one():
  assert resolve_query_memory_size(LossConfig(), 2048) == 2048        # auto: the queue's size
  assert resolve_query_memory_size(LossConfig(), 0) == 0
  assert resolve_query_memory_size(LossConfig(query_memory_size=0), 2048) == 0
  assert resolve_query_memory_size(LossConfig(query_memory_size=512), 2048) == 512
  # An automatic queue that comes out empty (a small catalogue) cannot carry one.
  with pytest.raises(ValueError, match="--query_memory_size=512 needs the item queue"):
    resolve_query_memory_size(LossConfig(query_memory_size=512), 0)


def test_bad_temperature_is_rejected():
  with pytest.raises(ValueError, match="temperature"):
    CrossBatchSoftmax(LossConfig(temperature=0.0))


def test_each_item_encoded_once_gives_every_row_and_its_gradient():
  """The batch's repeated items go through the tower once; embeddings and gradients must be
  those of encoding every row."""
  import tf_keras

  from twotower.model.retrieval import encode_each_item_once
  tf_keras.utils.set_random_seed(0)
  tower = tf_keras.Sequential([tf_keras.layers.Dense(8, activation="relu"),
                               tf_keras.layers.Dense(4)])

  class Tower(tf_keras.Model):
    def __init__(self):
      super().__init__()
      self.embedding = tf_keras.layers.Embedding(10, 3)
      self.body = tower

    def call(self, features, training=False):
      x = tf.concat([self.embedding(features["item_id"]),
                     tf.reduce_mean(self.embedding(features["tokens"]), axis=1)], axis=-1)
      return self.body(x, training=training)

  model = Tower()
  ids = tf.constant([3, 5, 3, 7, 5, 3], tf.int64)
  features = {"item_id": ids, "tokens": tf.stack([ids % 4, ids % 3], axis=1)}
  weights = tf.constant(np.random.default_rng(0).normal(size=(6, 4)), tf.float32)
  results = []
  for encode in (encode_each_item_once,
                 lambda tower_, f, training: tower_(f, training=training)):
    with tf.GradientTape() as tape:
      out = encode(model, features, training=True)
      loss = tf.reduce_sum(out * weights)
    results.append((out, tape.gradient(loss, model.trainable_variables)))
  (once, once_grads), (every, every_grads) = results
  np.testing.assert_allclose(once.numpy(), every.numpy(), atol=1e-6)
  for a, b in zip(once_grads, every_grads):
    np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                               atol=1e-5)
