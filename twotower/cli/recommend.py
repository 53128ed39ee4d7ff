"""twotower-recommend: print one user's recommendations from an export as JSON."""
import json

from absl import app, flags

import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
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
flags.DEFINE_list("show", None, "Item feature columns to print with each recommendation, "
                  "named as in the item features file (MovieLens-100K: movie_title, "
                  "release_year, class), or the aliases title and genres, or 'all' "
                  "(default: none; with --explain, the title column if there is one).")
flags.DEFINE_bool("explain", False, "Also print the user's history the query is built "
                  "from (newest first: --history or the export's latest items of a known "
                  "user), with the --show columns, to judge the recommendations by.")
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
  columns = _columns(recommender)
  recs = recommender.recommend(user, k=FLAGS.k, exclude_items=FLAGS.exclude,
                               with_features=columns or False)
  out = {"user_id": FLAGS.user_id,
         "recommendations": (recs if columns else
                             [{"item_id": i, "score": s} for i, s in recs])}
  if FLAGS.explain:
    out["known_user"] = recommender.is_known_user(FLAGS.user_id)
    history = recommender.user_history(user, with_features=columns or False)
    out["history"] = history if columns else [{"item_id": i} for i in history]
  print(json.dumps(out, indent=2, ensure_ascii=False))


def _columns(recommender) -> list:
  """The item columns --show names (checked against the export's item table)."""
  show = FLAGS.show
  if show is None:
    title = recommender.title_column if FLAGS.explain else None
    return [title] if title else []
  try:
    return recommender.resolve_item_columns(True if show == ["all"] else show)
  except ValueError as e:
    raise app.UsageError(f"--show: {e}") from None


def run():
  errors.run_job("twotower-recommend", main)


if __name__ == "__main__":
  run()
