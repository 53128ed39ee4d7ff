"""How a job ends on a mistake the user can fix: one line on stderr and exit status 2.

``twotower-train: error: empty.csv:1: the file is empty; ...`` tells a user what to fix; a
30-line traceback above it buries the message, and exit status 1 cannot be told from a
crash. So user errors (bad data, flags, paths) print one line and exit 2; every other
exception is a bug and keeps its traceback and exit status 1. ``--debug`` (or absl's
``--pdb``) shows the traceback of a user error too.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

import twotower
from twotower.errors import UserError

USAGE_EXIT_CODE = 2
_HELP_FLAGS = {"-?", "-h", "--help", "--helpshort", "--helpfull", "--helpxml"}

flags.DEFINE_bool("debug", False, "On a user error (bad input, flag or path), print the "
                  "Python traceback above the one-line message, and show TensorFlow's C++ "
                  "logs (unless TF_CPP_MIN_LOG_LEVEL is set); for bug reports.")
FLAGS = flags.FLAGS

# OSErrors about a path the user named: missing, of the wrong kind, or not readable.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError)


def require_directory(flag_name: str) -> None:
  """Flag ``--flag_name`` must name a directory or a path still to be created, so that a
  file given by mistake fails as the flags are parsed, not as a bare 'File exists'."""
  flags.register_validator(
      flag_name, lambda path: not path or not os.path.exists(path) or os.path.isdir(path),
      message="names a file; it must be a directory (or a path to create)")


def is_user_error(error: BaseException) -> bool:
  """Whether ``error`` describes a mistake in the job's input rather than a bug."""
  return isinstance(error, (UserError, flags.Error, app.UsageError) + _PATH_ERRORS)


# absl's wording of a missing required flag, and its prefix for an unreadable flagfile.
_REQUIRED = re.compile(r"^flag --(\w+)=None: Flag --\1 must have a value other than None\.$")
_FLAGFILE_PREFIX = "ERROR:: "


def describe(error: BaseException) -> str:
  """The error's message as one line (an OSError's with the path it names)."""
  if isinstance(error, OSError) and error.filename and error.strerror:
    message = f"{error.filename}: {error.strerror}"
  else:
    message = str(error) or type(error).__name__
  message = " ".join(line.strip() for line in message.splitlines() if line.strip())
  if isinstance(error, flags.Error):
    message = _REQUIRED.sub(r"--\1 is required", message)
    message = message.removeprefix(_FLAGFILE_PREFIX)
  return message


def fail(job: str, error: BaseException) -> NoReturn:
  """Prints ``JOB: error: MESSAGE`` on stderr and exits with status 2."""
  sys.stdout.flush()
  print(f"{job}: error: {describe(error)}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


_LIBRARY_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in ("tensorflow", "tf_keras"))


def _quiet_library_info(record: logging.LogRecord) -> bool:
  """Drops TensorFlow's own INFO lines (it logs through absl too: a "Sharding callback
  duration" per checkpoint save), which would interleave with the job's progress lines;
  its warnings and errors still show, and ``--debug`` keeps everything."""
  return record.levelno >= logging.WARNING or not any(
      d in record.pathname for d in _LIBRARY_DIRS)


def run_job(job: str, main: Callable[[], object],
            argv: Optional[Sequence[str]] = None) -> None:
  """``app.run`` for a twotower job: flag errors and user errors end as one line + exit 2.

  ``main`` takes no arguments: a job has flags only, so a stray positional argument
  (``workdir=runs/a`` without the dashes) is an error instead of being ignored.
  """
  def parse_flags(args: list[str]) -> list[str]:
    try:
      remaining = FLAGS(args)
    except flags.Error as e:
      fail(job, e)
    except SystemExit as e:   # absl's --help exits 1, which reads as a failure
      if e.code == 1 and _HELP_FLAGS & {arg.split("=")[0] for arg in args[1:]}:
        sys.exit(0)
      raise
    if FLAGS.debug and not twotower._TF_LOG_LEVEL_FROM_USER:
      os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"   # read when TensorFlow loads, in main
    if not FLAGS.debug:
      absl_logging.get_absl_logger().addFilter(_quiet_library_info)
    return remaining

  def run_main(args: list[str]) -> None:
    try:
      if len(args) > 1:
        raise app.UsageError(f"unexpected argument(s) {args[1:]}: every option is a flag "
                             f"(--name=value); see {job} --helpshort")
      main()
    except Exception as e:  # noqa: BLE001  (sorted into user errors and bugs here)
      if not is_user_error(e) or FLAGS.pdb_post_mortem:
        raise
      if FLAGS.debug:
        traceback.print_exc()
      fail(job, e)

  _show_in_help(main)
  app.run(run_main, argv=None if argv is None else list(argv), flags_parser=parse_flags)


def _show_in_help(main: Callable[[], object]) -> None:
  """--help and --helpshort list the flags of the main module (a console script defines
  none) under its docstring: make them the job's flags and the job module's docstring."""
  for module, defined in FLAGS.flags_by_module_dict().items():
    if module.startswith("twotower"):
      for flag in defined:
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  entry = sys.modules.get("__main__")
  if entry is not None and not entry.__doc__:
    entry.__doc__ = sys.modules[main.__module__].__doc__
