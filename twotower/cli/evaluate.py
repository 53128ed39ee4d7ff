"""twotower-evaluate: exact full-corpus retrieval metrics of a trained run."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

from absl import app, flags

from twotower.cli import output

flags.DEFINE_string("workdir", None, "Run directory written by twotower-train.")
flags.DEFINE_list("ks", None, "Cutoffs K (default: the run's --eval_ks).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower.jobs import evaluate
  ks = tuple(int(k) for k in FLAGS.ks) if FLAGS.ks else None
  output.print_json_result(lambda: evaluate.evaluate_workdir(FLAGS.workdir, ks=ks))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
