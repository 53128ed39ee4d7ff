"""Run as one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by
test_distributed.py): the check of distributed_check.py, with the replicas in separate
processes. Prints its JSON report and saves this worker's values to an .npz file, so that the
test can tell whether the workers agree.

Usage: multi_worker_check.py FREQUENCY[,FREQUENCY...] OUT_PREFIX
(writes OUT_PREFIX{task index}_{frequency}.npz)
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""          # one CPU replica per worker

from twotower.training.loop import make_strategy  # noqa: E402

# Before any other TensorFlow op: the strategy configures this process's collective ops.
STRATEGY = make_strategy("multi_worker")

import json  # noqa: E402

import distributed_check  # noqa: E402
import numpy as np  # noqa: E402


def main():
  frequencies, out_prefix = sys.argv[1].split(","), sys.argv[2]
  task = STRATEGY.cluster_resolver.task_id
  reports = {}
  for frequency in frequencies:
    reports[frequency], state = distributed_check.run_check(STRATEGY, frequency)
    np.savez(f"{out_prefix}{task}_{frequency}.npz", **state)
  print(json.dumps(reports))


if __name__ == "__main__":
  main()
