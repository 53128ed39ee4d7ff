"""twotower-rank: train the ranking head on a trained retrieval run (rerun to resume).

Its options are ``--ranking_<field>`` flags, as on twotower-pipeline; the unprefixed names
(``--npratio``) are aliases, so older flagfiles keep working.
"""
from absl import flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output
from twotower.cli import flags as cli_flags

flags.DEFINE_string("workdir", None, "Run directory of a finished twotower-train; the head "
                    "is written to WORKDIR/ranking (rerun to resume).")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
cli_flags.define_ranking_flags(alias_unprefixed=True)
FLAGS = flags.FLAGS


def main():
  options = cli_flags.ranking_options_from_flags()   # bad flags fail before TensorFlow loads
  from twotower.jobs.train_ranking import train_ranking
  output.print_json_result(lambda: train_ranking(FLAGS.workdir, **options)["final"])


def run():
  errors.run_job("twotower-rank", main)


if __name__ == "__main__":
  run()
