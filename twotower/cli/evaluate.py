"""twotower-evaluate: exact full-corpus retrieval metrics of a trained run.

Stdout is the JSON result; stderr also gets one line per split on the cold and warm slices
(twotower.evaluate), with the random ranking's Recall@K beside the cold figures.
"""
from absl import app, flags, logging

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output

flags.DEFINE_string("workdir", None, "Run directory written by twotower-train; its best "
                    "checkpoint is evaluated.")
flags.DEFINE_list("ks", None, "Cutoffs K of Recall/NDCG/HitRate@K, comma-separated "
                  "(default: the run's --eval_ks).")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
FLAGS = flags.FLAGS


def main():
  try:
    ks = tuple(int(k) for k in FLAGS.ks) if FLAGS.ks else None
  except ValueError:
    raise app.UsageError(f"--ks takes comma-separated integers, got "
                         f"{','.join(FLAGS.ks)}") from None
  from twotower.jobs import evaluate

  def compute() -> dict:
    result = evaluate.evaluate_workdir(FLAGS.workdir, ks=ks)
    for split in ("valid", "test"):
      if "cold" in result.get(split, {}):
        logging.info("%s", describe_slices(split, result[split]))
    return result

  output.print_json_result(compute)


def describe_slices(split: str, metrics: dict) -> str:
  """One line on a split's cold and warm slices: counts, Recall@K, the cold random floor."""
  parts = []
  for name in ("cold", "warm"):
    part = metrics[name]
    counts = (f"{name}: {part['num_targets']} targets of {part['num_users']} users, "
              f"{part['num_items']} items")
    ks = [key.split("@")[1] for key in part if key.startswith("recall@")]
    if not ks:
      parts.append(f"{counts} (no targets: no figures)")
      continue
    figures = []
    for k in ks:
      figure = f"recall@{k} {part[f'recall@{k}']:.4f}"
      if name == "cold":
        random = part[f"random_recall@{k}"]
        figure += f" (random {random:.4f}, {part[f'recall@{k}'] / random:.1f}x)"
      figures.append(figure)
    parts.append(f"{counts}: " + ", ".join(figures))
  return f"{split} slices: " + "; ".join(parts)


def run():
  errors.run_job("twotower-evaluate", main)


if __name__ == "__main__":
  run()
