"""twotower-train: train the retrieval model (rerun the same command to resume)."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

from absl import app, flags

from twotower.cli import flags as cli_flags
from twotower.cli import output

flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, vocab...).")
flags.mark_flag_as_required("workdir")
cli_flags.define_config_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower.train import loop
  output.print_json_result(
      lambda: loop.train(cli_flags.config_from_flags(), FLAGS.workdir)["final"])


def run():
  app.run(main)


if __name__ == "__main__":
  run()
