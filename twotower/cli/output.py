"""What a job prints: its result as JSON on stdout, everything else (progress bars) on stderr.

Keras' Progbar writes to stdout; a job whose stdout is piped into ``jq`` or parsed by a
script must print nothing there but its JSON result.
"""
from __future__ import annotations

import contextlib
import json
import sys
from typing import Callable


def print_json_result(compute: Callable[[], object]) -> None:
  """Runs ``compute`` with stdout sent to stderr, then prints its result as JSON."""
  with contextlib.redirect_stdout(sys.stderr):
    result = compute()
  print(json.dumps(result, indent=2, sort_keys=True))
