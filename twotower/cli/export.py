"""twotower-export: write the serving artifacts (query SavedModel, index, manifest)."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

from absl import app, flags

flags.DEFINE_string("workdir", None, "Run directory, trained and indexed.")
flags.DEFINE_string("export_dir", None, "Where to export (default: WORKDIR/export).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from twotower import export
  print(export.export(FLAGS.workdir, FLAGS.export_dir))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
