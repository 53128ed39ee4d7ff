"""Workdir-level jobs, the layer above the array libraries (data -> model -> train -> jobs).

Each takes a run directory, does one job on it and records the result there:
``train.train`` and ``train_ranking.train_ranking`` (training), ``evaluate.evaluate_workdir``,
``index.build_index`` and ``export.export``. The CLI (twotower/cli) and the package's public
API (``twotower.train``, ``twotower.build_index``, ...) call these.
"""
