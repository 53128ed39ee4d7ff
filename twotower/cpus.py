"""How many CPUs this process may use, for sizing thread pools."""
from __future__ import annotations

import os


def available() -> int:
  """CPUs this process may run on: its affinity mask where the OS has one (a container's
  cgroup-pinned share, not the host's count), else every CPU."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # not on Linux
    return os.cpu_count() or 1
