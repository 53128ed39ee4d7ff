"""Warm start on tomorrow's log: a day-1 run continued on days 1+2 vs a from-scratch run.

MovieLens-100K is cut by time: the first ``--day1_fraction`` of events (by timestamp) are
day 1, all events are days 1+2; day 1's feature tables hold only the users and items its
log has, so day 2 brings new users and new items (counted in the output). Every run goes
through ``twotower-train`` in its own process: day 1; then on days 1+2 (a) from scratch and
(b) ``--init_from`` the day-1 run, once per ``--warm`` flag set. Both score the same
test split (the per-user temporal split of days 1+2) over the same corpus; runs use
``--refit=train_valid`` by default, so the shipped (refit) model's test figure is held out
and is the one compared. Training steps are selection plus refit.
The first warm run is then indexed
and exported, and the export's item ids are checked to hold every day-2 item.

  nice -n 10 python experiments/warm_start.py --root=/tmp/warm_exp
  (flags for every run: --train_flags=--refit=none; per warm run: --warm="--patience=2")
"""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

import twotower  # noqa: F401
from twotower.data import movielens
from twotower.index import storage as index_storage

flags.DEFINE_string("root", "/tmp/twotower_warm_start", "Directory for the data and runs.")
flags.DEFINE_float("day1_fraction", 0.7, "Share of the events (by time) that are day 1.")
flags.DEFINE_multi_string("warm", ["--patience=4", "--patience=2", "--patience=1"],
                          "Flags of one warm run (space-separated), one run per value; "
                          "the first is indexed and exported.")
flags.DEFINE_list("train_flags", ["--refit=train_valid"],
                  "Extra twotower-train flags for every run.")
flags.DEFINE_bool("reuse", True, "Keep runs whose metrics.json is final (whatever their "
                  "flags: use another --root when --train_flags change).")
FLAGS = flags.FLAGS


def _write(path: str, header: list, columns: list) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for row in zip(*columns):
      f.write("\t".join(map(str, row)) + "\n")


def _table(table, keep_ids: np.ndarray, key: str, path: str) -> None:
  names = list(table.columns)
  rows = np.isin(table.columns[key], keep_ids)
  _write(path, [f"{n}:{table.kinds.get(n, 'token')}" for n in names],
         [table.columns[n][rows] for n in names])


def write_days(root: str, fraction: float) -> dict:
  """Day-1 and days-1+2 files (interactions, users, items); returns paths and counts."""
  raw = movielens.load_movielens_100k(None)
  inter = raw.interactions
  cut = np.quantile(inter.timestamp, fraction)
  out: dict = {"cut_timestamp": int(cut)}
  for day, rows in (("day1", inter.timestamp <= cut),
                    ("days12", np.ones(len(inter), bool))):
    directory = os.path.join(root, day)
    os.makedirs(directory, exist_ok=True)
    users, items = np.unique(inter.user_id[rows]), np.unique(inter.item_id[rows])
    paths = {name: os.path.join(directory, name)
             for name in ("interactions.tsv", "users.tsv", "items.tsv")}
    _write(paths["interactions.tsv"],
           ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
           [inter.user_id[rows], inter.item_id[rows], inter.label[rows].astype(int),
            inter.timestamp[rows]])
    _table(raw.user_features, users, "user_id", paths["users.tsv"])
    _table(raw.item_features, items, "item_id", paths["items.tsv"])
    out[day] = {"paths": paths, "events": int(rows.sum()), "users": users, "items": items}
  out["new_users"] = np.setdiff1d(out["days12"]["users"], out["day1"]["users"])
  out["new_items"] = np.setdiff1d(out["days12"]["items"], out["day1"]["items"])
  return out


def train(workdir: str, paths: dict, *extra: str) -> dict:
  """One twotower-train run in its own process (reused when already final)."""
  metrics_path = os.path.join(workdir, "metrics.json")
  if FLAGS.reuse and os.path.exists(metrics_path):
    with open(metrics_path) as f:
      metrics = json.load(f)
    if "final" in metrics:
      return metrics
  command = [sys.executable, "-m", "twotower.cli.train", f"--workdir={workdir}",
             f"--interactions={paths['interactions.tsv']}",
             f"--user_features={paths['users.tsv']}", f"--item_features={paths['items.tsv']}",
             "--noprogress", *FLAGS.train_flags, *extra]
  started = time.time()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
  with open(metrics_path) as f:
    metrics = json.load(f)
  metrics["wall_seconds"] = time.time() - started
  with open(metrics_path, "w") as f:
    json.dump(metrics, f, indent=2)
  return metrics


def own_steps(metrics: dict) -> int:
  """Steps this run trained: selection plus refit."""
  refit = metrics["final"].get("refit") or {}
  return int(metrics["final"]["steps"]) + int(refit.get("steps", 0))


def shipped_test(metrics: dict) -> dict:
  """Test figures of the model the run ships: the refit's when it refitted (train_valid)."""
  return (metrics["final"].get("refit") or {}).get("test") or metrics["final"]["test"]


def main(argv):
  del argv
  root = FLAGS.root
  days = write_days(root, FLAGS.day1_fraction)
  print(f"day 1: {days['day1']['events']} events, {len(days['day1']['users'])} users, "
        f"{len(days['day1']['items'])} items; days 1+2: {days['days12']['events']} events; "
        f"day 2 brings {len(days['new_users'])} new users and {len(days['new_items'])} new "
        f"items", flush=True)
  day1_dir = os.path.join(root, "run_day1")
  day1 = train(day1_dir, days["day1"]["paths"])
  runs = {"(a) scratch, days 1+2": (os.path.join(root, "run_scratch"),
                                    train(os.path.join(root, "run_scratch"),
                                          days["days12"]["paths"]))}
  for variant in FLAGS.warm:
    workdir = os.path.join(root, "run_warm" + re.sub(r"[^A-Za-z0-9.]+", "_", variant))
    runs[f"(b) warm {variant}"] = (
        workdir, train(workdir, days["days12"]["paths"], f"--init_from={day1_dir}",
                       *variant.split()))
  scratch = runs["(a) scratch, days 1+2"][1]
  base_recall, base_steps = shipped_test(scratch)["recall@20"], own_steps(scratch)
  print(f"\nday-1 run: shipped test R@20 {shipped_test(day1)['recall@20']:.4f} (its own test "
        f"split), {own_steps(day1)} steps, best epoch {day1['final']['best_epoch']}")
  print("\n| run | selection epochs | best epoch | steps (selection + refit) | selection "
        "test R@20 | shipped test R@20 | shipped test NDCG@20 | R@20 vs (a) | steps vs (a) "
        "| wall s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, (_, m) in runs.items():
    shipped, steps = shipped_test(m), own_steps(m)
    refit_steps = (m["final"].get("refit") or {}).get("steps", 0)
    print(f"| {name} | {len(m['epochs'])} | {m['final']['best_epoch']} | {steps} "
          f"({m['final']['steps']} + {refit_steps}) | {m['final']['test']['recall@20']:.4f} | "
          f"{shipped['recall@20']:.4f} | {shipped['ndcg@20']:.4f} | "
          f"{shipped['recall@20'] / base_recall:.3f} | {steps / base_steps:.2f} | "
          f"{m.get('wall_seconds', float('nan')):.0f} |")
  # The first warm run through index and export: does the export serve every day-2 item?
  warm_dir = runs[f"(b) warm {FLAGS.warm[0]}"][0]
  for job in ("index", "export"):
    subprocess.run([sys.executable, "-m", f"twotower.cli.{job}", f"--workdir={warm_dir}"],
                   check=True, stdout=subprocess.DEVNULL)
  exported = set(index_storage.load_item_ids(os.path.join(warm_dir, "export",
                                                          index_storage.ITEM_IDS)))
  missing = [i for i in days["new_items"] if i not in exported]
  with open(os.path.join(warm_dir, "export", "manifest.json")) as f:
    manifest = json.load(f)
  print(f"\nexport of {os.path.basename(warm_dir)}: {len(exported & set(days['new_items']))} "
        f"of {len(days['new_items'])} day-2 items present ({len(missing)} missing); "
        f"manifest parent {manifest.get('parent', {}).get('path')}, data_time_range "
        f"{manifest.get('data_time_range')}")


if __name__ == "__main__":
  app.run(main)
