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
flags.DEFINE_string("update_from", None, "Run directory of an earlier run whose index to "
                    "update to this run's items (new ones added, gone ones deleted, moved ones "
                    "re-inserted) instead of rebuilding; rebuilds when too much changed.")
flags.DEFINE_float("update_tolerance", 1e-6, "With --update_from: an item whose vector moved "
                   "by at most this cosine distance keeps its indexed (stale) vector, in "
                   "[0, 2); stale vectors cost recall, so the default only forgives float "
                   "noise.")
flags.DEFINE_float("update_max_changed_fraction", 0.2, "With --update_from: rebuild instead "
                   "when more than this fraction of the old index's rows would change "
                   "(added + deleted + moved); measured at 1M items: up to 0.2 an update "
                   "keeps recall and is >= 6x cheaper.")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
FLAGS = flags.FLAGS


def main():
  from twotower.jobs import index
  output.print_json_result(lambda: index.build_index(
      FLAGS.workdir, recall_target=FLAGS.recall_target,
      brute_force_below=FLAGS.brute_force_below, force_brute_force=FLAGS.brute_force,
      num_tuning_queries=FLAGS.num_tuning_queries, update_from=FLAGS.update_from,
      update_tolerance=FLAGS.update_tolerance,
      update_max_changed_fraction=FLAGS.update_max_changed_fraction))


def run():
  errors.run_job("twotower-index", main)


if __name__ == "__main__":
  run()
