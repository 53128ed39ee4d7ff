"""A stage run in a process of its own: its result, its errors and its memory."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import logging

from twotower import stage_process
from twotower.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pid_and_sum(a, b=0):
  return os.getpid(), a + b


def _raise_config_error(message):
  raise ConfigError(message)


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def _log(message):
  logging.info("stage says %s", message)
  logging.warning("stage warns %s", message)


def _print(message):
  print(message)


def _unpicklable():
  return lambda: None


def test_the_result_comes_back_from_another_process():
  pid, total = stage_process.run_in_process("adding", _pid_and_sum, 2, b=3)
  assert total == 5 and pid != os.getpid()


def test_an_error_in_the_stage_is_raised_here_with_its_traceback():
  with pytest.raises(ConfigError, match="--epochs must be positive") as raised:
    stage_process.run_in_process("checking", _raise_config_error, "--epochs must be positive")
  assert "_raise_config_error" in str(raised.value.__cause__)   # where, in the child


def test_a_killed_stage_says_which_and_how():
  with pytest.raises(stage_process.StageProcessError,
                     match="the dying stage's process was killed by SIGKILL"):
    stage_process.run_in_process("dying", _die)


def test_a_result_that_cannot_come_back_is_an_error_not_a_hang():
  with pytest.raises(stage_process.StageProcessError, match="cannot be sent back"):
    stage_process.run_in_process("lambda", _unpicklable)


def test_the_stage_logs_as_this_process_does(capfd):
  old = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.INFO)
    stage_process.run_in_process("logging", _log, "hello")
    assert "stage says hello" in capfd.readouterr().err
    logging.set_verbosity(logging.WARNING)
    stage_process.run_in_process("logging", _log, "quietly")
    err = capfd.readouterr().err
    assert "stage warns quietly" in err and "stage says quietly" not in err
  finally:
    logging.set_verbosity(old)


def test_a_stage_prints_where_this_process_prints(capfd):
  """The jobs keep stdout for their JSON result and send everything else (progress bars)
  to stderr; a stage's prints must follow."""
  with contextlib.redirect_stdout(sys.stderr):
    stage_process.run_in_process("printing", _print, "a progress bar")
  out, err = capfd.readouterr()
  assert "a progress bar" in err and "a progress bar" not in out
  stage_process.run_in_process("printing", _print, "a result")
  assert "a result" in capfd.readouterr().out


_PEAK_AFTER_A_LARGE_STAGE = """
import numpy as np
from twotower import stage_process

def peak_mb():
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))

def large_stage():
  block = np.ones(384 * 2**20 // 8)   # 384 MB, touched
  return float(block.sum()), peak_mb()

if __name__ == "__main__":
  before = peak_mb()
  total, child_peak = stage_process.run_in_process("large", large_stage)
  print(before, child_peak, peak_mb())
"""


def test_what_a_stage_allocates_is_not_held_by_the_pipeline(tmp_path):
  """The run's peak is its largest stage's, not their sum: what a stage took ends with its
  process (TensorFlow's allocator would keep it in this one)."""
  script = tmp_path / "pipeline.py"   # a file: the child imports its functions from it
  script.write_text(_PEAK_AFTER_A_LARGE_STAGE)
  done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  before, child_peak, after = (int(v) for v in done.stdout.split())
  assert child_peak > 384, child_peak        # the stage did hold it
  assert after - before < 100, (before, after)


_PARENT_KILLED_MID_STAGE = """
import os, sys, time
from twotower import stage_process

def long_stage(path):
  with open(path, "w") as f:
    f.write(str(os.getpid()))
  time.sleep(120)

if __name__ == "__main__":
  stage_process.run_in_process("long", long_stage, sys.argv[1])
"""


def test_a_stage_ends_when_the_pipeline_is_killed(tmp_path):
  """Killing the pipeline (SIGKILL reaches only its own process) must not leave a stage
  running on, writing the run directory under the next run."""
  script, pid_file = tmp_path / "pipeline.py", tmp_path / "stage.pid"
  script.write_text(_PARENT_KILLED_MID_STAGE)
  parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=ROOT)
  try:
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
      assert time.monotonic() < deadline and parent.poll() is None
      time.sleep(0.1)
    stage = int(pid_file.read_text())
  finally:
    parent.kill()
    parent.wait()
  deadline = time.monotonic() + 30
  while _alive(stage):
    assert time.monotonic() < deadline, "the stage outlived the pipeline"
    time.sleep(0.2)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # An exited child of the killed parent is reparented and reaped; a zombie counts as gone.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(") ")[-1].split()[0] != "Z"
