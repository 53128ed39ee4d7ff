"""twotower-export: write the serving artifacts (query SavedModel, index, manifest)."""
from absl import flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from twotower.cli import errors, output

flags.DEFINE_string("workdir", None, "Run directory, trained (twotower-train) and indexed "
                    "(twotower-index); its ranking head is exported too if it has one.")
flags.DEFINE_string("export_dir", None, "Where to write the export, replaced atomically "
                    "(default: WORKDIR/export).")
flags.mark_flag_as_required("workdir")
errors.require_directory("workdir")
errors.require_directory("export_dir")
FLAGS = flags.FLAGS


def main():
  from twotower.jobs import export
  output.print_json_result(
      lambda: {"export_dir": export.export(FLAGS.workdir, FLAGS.export_dir)})


def run():
  errors.run_job("twotower-export", main)


if __name__ == "__main__":
  run()
