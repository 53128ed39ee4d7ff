"""twotower-index: build the candidate index (ScaNN or brute force) of a trained workdir."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

from absl import app, flags

from twotower.cli import output

flags.DEFINE_string("workdir", None, "Run directory of a finished twotower-train.")
flags.DEFINE_float("recall_target", 0.95, "Tune ScaNN until recall@10 vs exact reaches this.")
flags.DEFINE_integer("brute_force_below", 20000, "Use exact brute force below this corpus size.")
flags.DEFINE_bool("brute_force", False, "Always use exact brute force.")
flags.DEFINE_integer("num_tuning_queries", 1000, "User queries to tune on (as many to report on).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower.jobs import index
  output.print_json_result(lambda: index.build_index(
      FLAGS.workdir, recall_target=FLAGS.recall_target,
      brute_force_below=FLAGS.brute_force_below, force_brute_force=FLAGS.brute_force,
      num_tuning_queries=FLAGS.num_tuning_queries))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
