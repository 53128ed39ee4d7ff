"""Peak resident memory of this process over a stretch of work (Linux /proc).

ru_maxrss only ever grows, so a benchmark that measures several things in one process resets
the high-water mark (VmHWM) through /proc/self/clear_refs before each and reads it after.
"""
import resource


def status_bytes(field: str) -> int:
  """A /proc/self/status field (VmRSS, VmHWM, ...) in bytes; 0 where there is none."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS; False where the kernel refuses."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    return False
  return status_bytes("VmHWM") <= status_bytes("VmRSS") + (1 << 20)


def peak_rss_bytes() -> int:
  # VmHWM, not ru_maxrss: the kernel also folds exited threads' high-water marks into
  # ru_maxrss, and clear_refs does not reset that part.
  return (status_bytes("VmHWM") or
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)   # KiB on Linux
