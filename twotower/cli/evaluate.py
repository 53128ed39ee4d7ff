"""twotower-evaluate: exact full-corpus retrieval metrics of a trained run."""
from absl import app, flags

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
  output.print_json_result(lambda: evaluate.evaluate_workdir(FLAGS.workdir, ks=ks))


def run():
  errors.run_job("twotower-evaluate", main)


if __name__ == "__main__":
  run()
