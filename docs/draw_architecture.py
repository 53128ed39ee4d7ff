"""Draws docs/architecture.png, the picture at the top of README.md.

Run `python docs/draw_architecture.py` (needs the `experiments` extra for matplotlib) after
changing the data flow it shows.
"""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

TRAIN, QUEUE, SERVE, DATA = "#dbe9f6", "#fde2c4", "#d9f0d3", "#eeeeee"


def box(ax, x, y, w, h, text, color, size=9.5, bold=False):
  ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                              fc=color, ec="#555555", lw=1.0))
  ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
          fontweight="bold" if bold else "normal", wrap=True)


def arrow(ax, start, end, text=None, offset=(0, 0.12), style="-|>", dashed=False):
  ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, lw=1.1,
                               color="#333333", linestyle="--" if dashed else "-",
                               shrinkA=2, shrinkB=2))
  if text:
    ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
            ha="center", va="bottom", fontsize=8, color="#333333")


def main():
  fig, ax = plt.subplots(figsize=(12, 5.2), dpi=110)
  ax.set_xlim(0, 12)
  ax.set_ylim(0, 5.2)
  ax.axis("off")
  ax.text(0.1, 5.0, "training", fontsize=11, fontweight="bold", color="#2b5d8a")
  ax.text(0.1, 1.55, "serving", fontsize=11, fontweight="bold", color="#2f6b2a")

  box(ax, 0.1, 3.7, 1.9, 0.9, "user id, features,\nrecent history", DATA)
  box(ax, 0.1, 2.2, 1.9, 0.9, "item id,\nfeatures", DATA)
  box(ax, 2.5, 3.7, 1.6, 0.9, "user tower", TRAIN, bold=True)
  box(ax, 2.5, 2.2, 1.6, 0.9, "item tower", TRAIN, bold=True)
  arrow(ax, (2.0, 4.15), (2.5, 4.15))
  arrow(ax, (2.0, 2.65), (2.5, 2.65))

  box(ax, 4.7, 3.7, 1.9, 0.9, "B queries u\n+ query memory\n(last M queries)", QUEUE)
  box(ax, 4.7, 2.2, 1.9, 0.9, "B candidates v\n+ CBNS queue\n(last M items)", QUEUE)
  arrow(ax, (4.1, 4.15), (4.7, 4.15))
  arrow(ax, (4.1, 2.65), (4.7, 2.65))

  box(ax, 7.2, 2.75, 2.3, 1.4,
      "sampled softmax\nu·v / temperature\n− log q(item)\nmask hits & history", TRAIN)
  arrow(ax, (6.6, 4.15), (7.2, 3.75))
  arrow(ax, (6.6, 2.65), (7.2, 3.15))
  box(ax, 10.0, 2.95, 1.9, 1.0, "loss → both\ntowers", TRAIN)
  arrow(ax, (9.5, 3.45), (10.0, 3.45))

  box(ax, 0.1, 0.25, 1.9, 0.9, "a user's id,\nfeatures, history", DATA)
  box(ax, 2.5, 0.25, 1.6, 0.9, "user tower\n→ query vector", SERVE)
  box(ax, 4.7, 0.25, 1.9, 0.9, "tuned ScaNN index\nof item vectors", SERVE)
  box(ax, 7.2, 0.25, 2.3, 0.9, "top 100 re-scored\nby the ranking head", SERVE)
  box(ax, 10.0, 0.25, 1.9, 0.9, "top k\nrecommendations", SERVE)
  arrow(ax, (2.0, 0.7), (2.5, 0.7))
  arrow(ax, (4.1, 0.7), (4.7, 0.7))
  arrow(ax, (6.6, 0.7), (7.2, 0.7))
  arrow(ax, (9.5, 0.7), (10.0, 0.7))
  arrow(ax, (3.9, 2.2), (5.4, 1.15), "every item, encoded once", offset=(1.25, -0.2),
        dashed=True)
  out = pathlib.Path(__file__).with_name("architecture.png")
  fig.savefig(out, bbox_inches="tight")
  print(out)


if __name__ == "__main__":
  main()
