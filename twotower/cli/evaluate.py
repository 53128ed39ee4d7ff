"""twotower-evaluate: exact full-corpus retrieval metrics of a trained run."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

import json

from absl import app, flags

flags.DEFINE_string("workdir", None, "Run directory written by twotower-train.")
flags.DEFINE_list("ks", None, "Cutoffs K (default: the run's --eval_ks).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower import evaluate
  ks = tuple(int(k) for k in FLAGS.ks) if FLAGS.ks else None
  print(json.dumps(evaluate.evaluate_workdir(FLAGS.workdir, ks=ks), indent=2, sort_keys=True))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
