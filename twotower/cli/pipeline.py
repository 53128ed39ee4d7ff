"""twotower-pipeline: train -> rank -> index -> export -> one sample recommendation.

The quick start's single command. Each stage is the same library function its own job
calls; rerunning resumes training and rebuilds the later stages.
"""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)


from absl import app, flags

from twotower.cli import flags as cli_flags
from twotower.cli import output

flags.DEFINE_string("workdir", None, "Run directory.")
flags.DEFINE_string("export_dir", None, "Where to export (default: WORKDIR/export).")
flags.DEFINE_string("sample_user_id", None, "User for the sample recommendation "
                    "(default: the first user of the test split).")
flags.DEFINE_bool("rank", True, "Train the ranking head (stage 2).")
flags.mark_flag_as_required("workdir")
cli_flags.define_config_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower.pipeline import run_pipeline
  output.print_json_result(lambda: run_pipeline(
      cli_flags.config_from_flags(), FLAGS.workdir, export_dir=FLAGS.export_dir,
      sample_user_id=FLAGS.sample_user_id, rank=FLAGS.rank))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
