"""twotower-train: train the retrieval model (rerun the same command to resume)."""
from absl import flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output
from twotower.cli import flags as cli_flags

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.json, "
                    "vocabularies, config.json; rerun with the same one to resume.")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
cli_flags.define_config_flags()
FLAGS = flags.FLAGS


def main():
  config = cli_flags.config_from_flags()   # bad flags fail before TensorFlow loads
  from twotower.jobs import train as train_job
  output.print_json_result(lambda: train_job.train(config, FLAGS.workdir)["final"])


def run():
  errors.run_job("twotower-train", main)


if __name__ == "__main__":
  run()
