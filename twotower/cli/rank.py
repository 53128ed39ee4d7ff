"""twotower-rank: train the ranking head on a trained retrieval run (rerun to resume)."""
import twotower  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)

import dataclasses

from absl import app, flags

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


def _define_flags() -> None:
  """One flag per RankingConfig field; the dataclass holds the defaults."""
  for field in dataclasses.fields(RankingConfig):
    name, default = field.name, field.default
    help_text = _HELP.get(name, f"ranking.{name}")
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float) or name == "rating_threshold":
      flags.DEFINE_float(name, default, help_text)
    elif isinstance(default, tuple):
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


_define_flags()
FLAGS = flags.FLAGS


def options_from_flags() -> dict:
  options = {}
  for field in dataclasses.fields(RankingConfig):
    value = FLAGS[field.name].value
    if isinstance(field.default, tuple):
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise flags.ValidationError(
            f"--{field.name} takes comma-separated integers, got {','.join(value)}")
    options[field.name] = value
  return options


def main(argv):
  del argv
  from twotower.train import ranking
  output.print_json_result(
      lambda: ranking.train_ranking(FLAGS.workdir, **options_from_flags())["final"])


def run():
  app.run(main)


if __name__ == "__main__":
  run()
