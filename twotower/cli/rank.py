"""twotower-rank: train the ranking head on a trained retrieval run (rerun to resume)."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

import dataclasses

from absl import app, flags

from twotower.cli import flags as cli_flags
from twotower.cli import output
from twotower.model.ranking import RankingConfig

flags.DEFINE_string("workdir", None, "Run directory written by twotower-train.")
flags.mark_flag_as_required("workdir")

_HELP = {
    "num_candidates": "Retrieval top-N per query: negatives are mined from it and it is "
                      "what the head re-ranks.",
    "npratio": "Negatives per positive in training and held-out impressions.",
    "random_negative_fraction": "Share of the negatives drawn uniformly from the corpus "
                                "instead of the retrieval top-N.",
    "loss": "softmax (listwise over 1 + npratio) or bce (pointwise).",
    "rating_threshold": "With ratings: an interaction is positive iff rating >= this.",
    "early_stopping_metric": "Validation metric for best epoch / early stopping, e.g. "
                             "two_stage_ndcg@10, gauc, auc, ndcg@10.",
    "id_dropout": "Share of user ids replaced by OOV in training; -1: the retrieval run's.",
}


cli_flags.define_dataclass_flags(RankingConfig, _HELP, "ranking")
FLAGS = flags.FLAGS


def options_from_flags() -> dict:
  return {field.name: cli_flags.field_value(field)
          for field in dataclasses.fields(RankingConfig)}


def main(argv):
  del argv
  from twotower.train import ranking
  output.print_json_result(
      lambda: ranking.train_ranking(FLAGS.workdir, **options_from_flags())["final"])


def run():
  app.run(main)


if __name__ == "__main__":
  run()
