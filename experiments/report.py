"""How every benchmark hands its figures over: JSON on stdout, and a file if asked."""
import json
from typing import Optional


def emit(report: dict, output: Optional[str] = None) -> None:
  print(json.dumps(report, indent=2))
  if output:
    with open(output, "w") as f:
      json.dump(report, f, indent=2)
