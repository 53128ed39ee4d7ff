"""House habits as tests, so README's one test command (and so CI) runs them: ruff (pycodestyle,
pyflakes, import order, bugbear) and mypy over the package, configured in pyproject.toml."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _tool(name: str) -> str:
  path = os.path.join(BIN, name)
  if not os.path.exists(path):
    path = shutil.which(name) or ""
  if not path:
    pytest.fail(f"{name} is not installed: pip install -e '.[test]' brings it")
  return path


def _run(*command: str) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
  done = _run(_tool("ruff"), "check", "twotower", "tests", "experiments", "docs")
  assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_mypy_finds_nothing():
  done = _run(_tool("mypy"), "--cache-dir", os.devnull)   # files and options: pyproject.toml
  assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
