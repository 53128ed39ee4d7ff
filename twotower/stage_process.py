"""Running one stage of a run in a process of its own, so that its memory ends with it.

TensorFlow's CPU allocator under oneDNN (which TensorFlow turns on by itself on Intel CPUs)
pools freed tensors and never returns them, and what glibc's heap frees mid-heap stays
mapped too; in one process each stage of a pipeline starts where the previous one peaked.
At a million items the pipeline in one process peaked at 10.7 GB, where no stage needs more
than about 6.2 GB on its own (experiments/RESULTS.md, "A million items end to end"). A stage
run here gives everything back to the system when it returns. Turning oneDNN off instead
returned the memory but made every TensorFlow stage 10-20% slower and still peaked at 8.6 GB.

The child is a fresh interpreter (multiprocessing's "spawn": forking a process that has
started TensorFlow's thread pools is unsafe); it logs as the parent does (absl verbosity and
filters; stdout sent to stderr where the parent's is), and its result or exception comes
back through a pipe. Arguments and results must pickle: configs, paths and JSON-like dicts,
never models or arrays (stages hand those on through the run directory).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from absl import flags
from absl import logging as absl_logging


class StageProcessError(RuntimeError):
  """A stage's process ended without a result (killed, or its result would not pickle)."""


class _ChildTraceback(Exception):
  """The child's traceback, chained under the exception it raised (as concurrent.futures
  does), so ``--debug`` shows where in the stage it happened."""

  def __init__(self, text: str):
    super().__init__(text)
    self.text = text

  def __str__(self) -> str:
    return f"\n\"\"\"\n{self.text}\"\"\""


def run_in_process(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
  """``fn(*args, **kwargs)`` in a fresh process; returns its result or raises its exception.

  ``fn`` must be a module-level function. ``name`` names the stage in errors.
  """
  context = multiprocessing.get_context("spawn")
  receive, send = context.Pipe(duplex=False)
  logger = absl_logging.get_absl_logger()
  # A job that sends its stdout to stderr (the CLI keeps stdout for its JSON result) has
  # its stages do the same: the child's sys.stdout is the real one otherwise.
  stdout_to_stderr = sys.stdout is sys.stderr
  child = context.Process(
      target=_child, name=f"twotower {name}",
      args=(send, absl_logging.get_verbosity(), list(logger.filters), stdout_to_stderr, fn,
            args, kwargs))
  child.start()
  send.close()   # the child holds the only writer: EOF below means it ended without a word
  try:
    outcome = receive.recv()
  except EOFError:
    outcome = None
  finally:
    receive.close()
    child.join()
  if outcome is None:
    code = child.exitcode if child.exitcode is not None else 0
    if code < 0:
      signame = signal.Signals(-code).name
      why = f"was killed by {signame}" + (
          " (out of memory? the kernel's OOM killer sends it)" if -code == signal.SIGKILL
          else "")
    else:
      why = f"exited with code {code}"
    raise StageProcessError(f"the {name} stage's process {why} before returning its result")
  kind, value, trace = outcome
  if kind == "error":
    raise value from _ChildTraceback(trace)
  return value


def _exit_with_parent(parent: int) -> None:
  """Ends this process once its parent has gone (killed, say): a stage must not go on
  writing the run directory under a rerun."""
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)


def _child(send, verbosity: int, filters: list, stdout_to_stderr: bool,
           fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
  if stdout_to_stderr:
    sys.stdout = sys.stderr
  flags.FLAGS.mark_as_parsed()   # library code reads no flags; this only quiets absl's warning
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(verbosity)
  for log_filter in filters:
    absl_logging.get_absl_logger().addFilter(log_filter)
  outcome: tuple[str, Any, Optional[str]]
  try:
    outcome = ("ok", fn(*args, **kwargs), None)
  except BaseException as e:  # noqa: BLE001  (every failure goes back to the parent)
    outcome = ("error", e, traceback.format_exc())
  try:
    send.send(outcome)
  except Exception as e:  # noqa: BLE001  (the result or the exception would not pickle)
    send.send(("error", StageProcessError(
        f"{fn.__name__} returned or raised something that cannot be sent back: "
        f"{type(e).__name__}: {e}"), outcome[2] or ""))
  finally:
    send.close()
