"""twotower-index: build the candidate index (ScaNN or brute force) of a trained workdir."""
from absl import flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output

flags.DEFINE_string("workdir", None, "Run directory of a finished twotower-train; the index "
                    "is written into it.")
flags.DEFINE_float("recall_target", 0.95, "Tune ScaNN until its recall@10 against exact "
                   "search reaches this, in (0, 1]; higher is slower per query.")
flags.DEFINE_integer("brute_force_below", 20000, "Use exact brute force for corpora of fewer "
                     "items than this, where it is as fast as ScaNN and exact.")
flags.DEFINE_bool("brute_force", False, "Always use exact brute force, whatever the corpus "
                  "size.")
flags.DEFINE_integer("num_tuning_queries", 1000, "User queries to tune ScaNN on (as many "
                     "again to report its recall on).")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
FLAGS = flags.FLAGS


def main():
  from twotower.jobs import index
  output.print_json_result(lambda: index.build_index(
      FLAGS.workdir, recall_target=FLAGS.recall_target,
      brute_force_below=FLAGS.brute_force_below, force_brute_force=FLAGS.brute_force,
      num_tuning_queries=FLAGS.num_tuning_queries))


def run():
  errors.run_job("twotower-index", main)


if __name__ == "__main__":
  run()
