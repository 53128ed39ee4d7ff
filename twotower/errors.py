"""The exceptions a user can fix: bad input files, options or directories.

The jobs (twotower/cli) print such an error as one line, ``twotower-JOB: error: ...``,
and exit with status 2; any other exception is a bug and keeps its traceback. So a
message raised as a UserError must say what is wrong and where (file, line, field or flag)
on its own.
"""


class UserError(Exception):
  """A problem in what the user gave (data, flags, paths), described by its message."""


class ConfigError(UserError, ValueError):
  """An option out of range or inconsistent with another; the message names the flag."""


class InputError(UserError, ValueError):
  """A request that cannot be served as given (unknown user field or item column, bad k)."""
