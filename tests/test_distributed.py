"""Multi-replica training equals single-device training on the same global batch."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_check.py")


@pytest.mark.parametrize("frequency", ["static", "streaming"])
def test_mirrored_two_replicas_match_single_device(frequency):
  # A fresh process: logical CPU devices must be configured before TF starts.
  out = subprocess.run([sys.executable, SCRIPT, frequency], capture_output=True, text=True,
                       timeout=300, check=True).stdout
  report = json.loads(out.strip().splitlines()[-1])
  assert max(report["loss"]) < 1e-5
  assert max(report["grad"]) < 1e-5
  assert max(report["queue"]) < 1e-5          # same entries, same order as one device
  assert all(report["replicas_agree"])
