"""Multi-replica training equals single-device training on the same global batch."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(__file__)
MIRRORED_SCRIPT = os.path.join(HERE, "distributed_check.py")
WORKER_SCRIPT = os.path.join(HERE, "multi_worker_check.py")
# A hung collective (a worker died, a port was taken) fails the test instead of blocking CI.
TIMEOUT_S = 240


def _assert_matches_single_device(report):
  assert max(report["loss"]) < 1e-5
  assert max(report["grad"]) < 1e-5
  assert max(report["queue"]) < 1e-5          # same entries, same order as one device
  assert max(report["frequency"]) < 1e-5      # the estimator saw the global batch
  assert all(report["replicas_agree"])
  assert all(report["dataset_slices"])        # the Trainer's input: replica r, r-th slice


def test_trainer_runs_mirrored_like_one_device(tmp_path):
  # The whole loop: every Python-side read of a distributed variable, checkpoints, the
  # drift-driven queue switch, and an uneven split of the global batch over the replicas.
  out = subprocess.run([sys.executable, MIRRORED_SCRIPT, "trainer", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  one, two = report["none"], report["mirrored"]
  # The first drift is measured between steps 5 and 10.
  assert two["queue_enabled_at_step"] == one["queue_enabled_at_step"] == 10
  # Replicas need equal shares: the partial last batch of each of the 2 epochs is left out.
  assert two["final"]["steps"] == one["final"]["steps"] - 2
  assert two["losses"] == pytest.approx(one["losses"], rel=0.02)
  assert two["final"]["valid"]["recall@20"] == pytest.approx(
      one["final"]["valid"]["recall@20"], abs=0.02)


@pytest.mark.parametrize("frequency", ["static", "streaming"])
def test_mirrored_two_replicas_match_single_device(frequency):
  # A fresh process: logical CPU devices must be configured before TF starts.
  out = subprocess.run([sys.executable, MIRRORED_SCRIPT, frequency], capture_output=True,
                       text=True, timeout=TIMEOUT_S, check=True).stdout
  _assert_matches_single_device(json.loads(out.strip().splitlines()[-1]))


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _run_workers(args, tmp_path, num_workers=2):
  """Runs WORKER_SCRIPT in ``num_workers`` processes forming one cluster on loopback; returns
  their stdouts. Fails (and kills them all) as soon as one fails, or on the timeout."""
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(num_workers)]}
  procs, logs = [], []
  try:
    for index in range(num_workers):
      env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": index}}))
      logs.append((open(tmp_path / f"worker{index}.out", "w+"),
                   open(tmp_path / f"worker{index}.err", "w+")))
      procs.append(subprocess.Popen([sys.executable, WORKER_SCRIPT, *args], env=env,
                                    stdout=logs[-1][0], stderr=logs[-1][1]))
    deadline = time.monotonic() + TIMEOUT_S
    while True:
      codes = [p.poll() for p in procs]
      if all(code == 0 for code in codes):
        break
      failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
      if failed or time.monotonic() > deadline:
        for p in procs:
          if p.poll() is None:
            p.kill()
        errors = []
        for index, (_, err) in enumerate(logs):
          err.seek(0)
          errors.append(f"--- worker {index} stderr:\n{err.read()[-3000:]}")
        why = f"workers {failed} failed" if failed else f"no result in {TIMEOUT_S} s"
        pytest.fail(f"{why}\n" + "\n".join(errors))
      time.sleep(0.2)
    outputs = []
    for out, _ in logs:
      out.seek(0)
      outputs.append(out.read())
    return outputs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for files in logs:
      for f in files:
        f.close()


def test_multi_worker_two_processes_match_single_device(tmp_path):
  frequencies = ["static", "streaming"]
  outputs = _run_workers([",".join(frequencies), str(tmp_path / "state")], tmp_path)
  for worker, out in enumerate(outputs):
    reports = json.loads(out.strip().splitlines()[-1])
    for frequency in frequencies:
      print(f"worker {worker}, {frequency}: {reports[frequency]}")
      _assert_matches_single_device(reports[frequency])
  # Both workers hold the same loss, gradients, queue and frequency estimator, bit for bit.
  for frequency in frequencies:
    states = [np.load(tmp_path / f"state{worker}_{frequency}.npz") for worker in range(2)]
    assert sorted(states[0].files) == sorted(states[1].files)
    for key in states[0].files:
      np.testing.assert_array_equal(states[0][key], states[1][key], err_msg=key)


@pytest.mark.parametrize("tf_config, problem", [
    (None, "unset"), ("{not json", "not valid"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     "index 1")])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, problem):
  from twotower.training.loop import make_strategy
  if tf_config is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(ValueError, match="--distribution=multi_worker needs TF_CONFIG") as e:
    make_strategy("multi_worker")
  assert problem in str(e.value)
  with pytest.raises(ValueError, match="--distribution must be one of .*'multi_worker'"):
    make_strategy("multiworker")
