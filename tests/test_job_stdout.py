"""Every job as a user runs it (a subprocess through its absl entry point), chained on one
tiny synthetic run: stdout is exactly one JSON document, also with progress bars on (they go
to stderr); twotower-evaluate measures the trained run; twotower-recommend --norerank gives
the retrieval order.

One module fixture runs train -> evaluate -> rank -> index -> export -> recommend on one
workdir, and twotower-pipeline on another (in parallel: the two chains share nothing).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

TINY = ["--dataset=synthetic", "--synthetic_users=200", "--synthetic_items=100",
        "--synthetic_interactions=3000", "--epochs=1", "--batch_size=128",
        "--embedding_dim=16", "--id_embedding_dim=16", "--feature_embedding_dim=8",
        "--user_layers=32", "--item_layers=32", "--history_length=5", "--queue_size=0",
        "--eval_ks=5,10", "--early_stopping_metric=recall@10",
        "--refit=none"]   # the jobs' output, not the refit (tests/test_refit.py)
TINY_RANKING = ["--ranking_epochs=1", "--ranking_num_candidates=20", "--ranking_batch_size=128",
                "--ranking_layers=16", "--ranking_embedding_dim=8"]
# Keras' bar in a pipe: "3/3 [==============================] - 0s 5ms/step - loss: ..."
PROGRESS_BAR = re.compile(r"\d+/\d+ \[=+")


def _job(name: str) -> list:
  return [sys.executable, "-m", f"twotower.cli.{name}"]


def _finish(proc: subprocess.Popen, what: str) -> dict:
  stdout, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{stderr[-3000:]}"
  return {"stdout": stdout, "stderr": stderr}


def _run(args: list, what: str) -> dict:
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return _finish(proc, what)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  root = tmp_path_factory.mktemp("jobs")
  workdir, export_dir = str(root / "run"), str(root / "export")
  pipeline = subprocess.Popen(
      _job("pipeline") + [f"--workdir={root / 'pipeline'}", *TINY, *TINY_RANKING,
                          "--progress"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  done = {"train": _run(_job("train") + [f"--workdir={workdir}", *TINY, "--progress"], "train")}
  done["evaluate"] = _run(_job("evaluate") + [f"--workdir={workdir}", "--ks=3,10"], "evaluate")
  done["rank"] = _run(_job("rank") + [f"--workdir={workdir}", *TINY_RANKING,
                                      "--ranking_progress"], "rank")
  done["index"] = _run(_job("index") + [f"--workdir={workdir}"], "index")
  done["export"] = _run(_job("export") + [f"--workdir={workdir}", f"--export_dir={export_dir}"],
                        "export")
  with open(os.path.join(workdir, "vocab", "user_id.txt"), encoding="utf-8") as f:
    user_id = f.readline().rstrip("\n")
  ask = _job("recommend") + [f"--export_dir={export_dir}", f"--user_id={user_id}", "--k=10"]
  done["recommend"] = _run(ask, "recommend")
  done["recommend --norerank"] = _run(ask + ["--norerank"], "recommend --norerank")
  done["pipeline"] = _finish(pipeline, "pipeline")
  return {"workdir": workdir, "export_dir": export_dir, "user_id": user_id, "done": done}


@pytest.mark.parametrize("job", ["train", "evaluate", "rank", "index", "export", "recommend",
                                 "recommend --norerank", "pipeline"])
def test_stdout_is_exactly_one_json_document(jobs, job):
  stdout = jobs["done"][job]["stdout"]
  result = json.loads(stdout)          # raises on anything before or after the document
  assert isinstance(result, dict) and result, stdout[:500]
  assert stdout.lstrip().startswith("{") and stdout.rstrip().endswith("}")


@pytest.mark.parametrize("job", ["train", "rank", "pipeline"])
def test_progress_bars_go_to_stderr(jobs, job):
  """Run with --progress: the bars are drawn, on stderr (and stdout still parses, above)."""
  done = jobs["done"][job]
  assert PROGRESS_BAR.search(done["stderr"]), done["stderr"][-2000:]
  assert not PROGRESS_BAR.search(done["stdout"])


@pytest.mark.parametrize("job", ["train", "rank", "pipeline"])
def test_stderr_has_no_tensorflow_info_lines(jobs, job):
  """TensorFlow logs through absl too (a "Sharding callback duration" line per checkpoint
  save); the jobs keep stderr for their own progress, and TensorFlow's warnings."""
  stderr = jobs["done"][job]["stderr"]
  assert "epoch 0: loss" in stderr                  # the job's own INFO lines still show
  assert not re.search(r"^I\d{4} .*(functional_saver|tensorflow)", stderr, re.M), stderr[-2000:]
  assert "Sharding callback" not in stderr


def test_pipeline_summary_has_every_stage(jobs):
  summary = json.loads(jobs["done"]["pipeline"]["stdout"])
  assert {"retrieval", "ranking", "index", "export_dir", "sample"} <= set(summary)
  assert len(summary["sample"]["recommendations"]) == 10


def test_evaluate_measures_the_best_model_as_training_did(jobs):
  """The same best checkpoint scored by the same exact evaluation: training's final test
  metrics at K=10, at the cutoffs --ks asks for, and recorded in metrics.json."""
  trained = json.loads(jobs["done"]["train"]["stdout"])
  evaluated = json.loads(jobs["done"]["evaluate"]["stdout"])
  assert {k for k in evaluated["test"] if "@" in k} == {
      f"{kind}@{k}" for kind in ("recall", "ndcg", "hit_rate") for k in (3, 10)}
  for split in ("valid", "test"):
    for key in ("recall@10", "ndcg@10", "hit_rate@10", "mrr", "num_users"):
      np.testing.assert_allclose(evaluated[split][key], trained[split][key], rtol=1e-5,
                                 err_msg=f"{split} {key}")
  assert evaluated["test"]["recall@3"] <= evaluated["test"]["recall@10"]
  np.testing.assert_allclose(evaluated["most_popular_test"]["recall@10"],
                             trained["most_popular_test"]["recall@10"], rtol=1e-6)
  with open(os.path.join(jobs["workdir"], "metrics.json")) as f:
    assert json.load(f)["evaluation"] == evaluated


def test_recommend_norerank_gives_the_retrieval_order(jobs):
  from twotower import serving
  user = {"user_id": jobs["user_id"]}
  items = lambda job: [r["item_id"] for r in json.loads(jobs["done"][job]["stdout"])[
      "recommendations"]]
  two_stage = serving.Recommender.load(jobs["export_dir"])
  retrieval = serving.Recommender.load(jobs["export_dir"], rerank=False)
  assert two_stage.reranker is not None            # the export has a head to skip
  assert items("recommend --norerank") == [i for i, _ in retrieval.recommend(user, k=10)]
  assert items("recommend") == [i for i, _ in two_stage.recommend(user, k=10)]
  assert items("recommend") != items("recommend --norerank")
