"""twotower-pipeline: train -> rank -> index -> export -> one sample recommendation.

The quick start's single command. Each stage is the same library function its own job
calls, in a process of its own (--noisolate_stages: all in this one); rerunning resumes
training and rebuilds the later stages. The ranking stage takes
every ``--ranking_<field>`` flag of twotower-rank; its seed and progress bar follow --seed
and --progress unless --ranking_seed / --ranking_progress are given.
"""
from absl import flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output
from twotower.cli import flags as cli_flags

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.json, vocabularies, "
                    "the ranking head and the index; rerun with the same one to resume.")
flags.DEFINE_string("export_dir", None, "Where to export the serving artifacts (default: "
                    "WORKDIR/export).")
flags.DEFINE_string("sample_user_id", None, "User for the sample recommendation "
                    "(default: the first user of the test split).")
flags.DEFINE_bool("rank", True, "Train the ranking head (stage 2) and export it for "
                  "re-ranking; --norank: retrieval only.")
flags.DEFINE_bool("isolate_stages", True, "Run training, the index with the head, and the "
                  "export each in a process of its own, so that each gives its memory back "
                  "when it ends (TensorFlow keeps what it allocated); --noisolate_stages runs "
                  "them in this process, e.g. under a debugger.")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
errors.require_directory("export_dir")
cli_flags.define_config_flags()
cli_flags.define_ranking_flags()
FLAGS = flags.FLAGS


def main():
  config = cli_flags.config_from_flags()   # bad flags fail before TensorFlow loads
  ranking_options = cli_flags.ranking_options_from_flags(inherit=("seed", "progress"))
  from twotower.pipeline import run_pipeline
  output.print_json_result(lambda: run_pipeline(
      config, FLAGS.workdir, export_dir=FLAGS.export_dir,
      sample_user_id=FLAGS.sample_user_id, rank=FLAGS.rank,
      ranking_options=ranking_options, isolate_stages=FLAGS.isolate_stages))


def run():
  errors.run_job("twotower-pipeline", main)


if __name__ == "__main__":
  run()
