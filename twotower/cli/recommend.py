"""twotower-recommend: print one user's recommendations from an export as JSON."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

import json

from absl import app, flags

from twotower.cli import errors

flags.DEFINE_string("export_dir", None, "An export written by twotower-export.")
flags.DEFINE_string("user_id", None, "The user's id as in the input files.")
flags.DEFINE_integer("k", 10, "Number of recommendations.")
flags.DEFINE_list("history", None, "Recent item ids, oldest first (default: the user's "
                  "history known to the export).")
flags.DEFINE_list("exclude", [], "Item ids never to recommend (e.g. already seen).")
flags.DEFINE_multi_string("feature", [], "A user feature as NAME=VALUE (repeatable).")
flags.DEFINE_bool("rerank", True, "Re-rank with the export's ranking head, if it has one.")
flags.DEFINE_integer("rerank_candidates", 100, "Retrieved candidates the head re-ranks.")
flags.mark_flags_as_required(["export_dir", "user_id"])
FLAGS = flags.FLAGS


def main():
  from twotower.serving import Recommender
  user = {"user_id": FLAGS.user_id}
  if FLAGS.history is not None:
    user["history"] = FLAGS.history
  for item in FLAGS.feature:
    name, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--feature takes NAME=VALUE, got {item!r}")
    user[name] = value
  recommender = Recommender.load(FLAGS.export_dir, rerank=FLAGS.rerank,
                                rerank_candidates=FLAGS.rerank_candidates)
  recs = recommender.recommend(user, k=FLAGS.k, exclude_items=FLAGS.exclude)
  print(json.dumps({"user_id": FLAGS.user_id,
                    "recommendations": [{"item_id": i, "score": s} for i, s in recs]},
                   indent=2))


def run():
  errors.run_job("twotower-recommend", main)


if __name__ == "__main__":
  run()
