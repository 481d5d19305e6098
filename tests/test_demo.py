"""The main job, `rmsecrets demo --quick` (made once for the session, tests/conftest.py): its report and metrics, and
the same demo killed three times with SIGKILL, each after a stage has finished, resuming to the same numbers."""
import json

import numpy as np
import pytest
from faults import run_with_kills, same_bytes, same_json


def test_demo_quick_writes_the_report(demo_quick):
    tmp_path = demo_quick.parent
    report = (tmp_path / "demo" / "report.md").read_text()
    for png in ("world_label_noise.png", "rm_training.png", "label_tricks.png", "contrastive_features.png", "ppo.png",
                "iterative.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 5000 and f"]({png})" in report
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    rm = metrics["reward_model"]
    assert 0.6 < rm["accuracy_true"] <= 1 and 0.55 < rm["accuracy"] < rm["accuracy_true"]   # above chance; truth above labels
    assert f"| truth | {rm['accuracy_true']:.3f}" in report       # the report shows the measured numbers
    simcse = next(r for r in metrics["contrastive"]["summary"] if r["method"] == "simcse")
    assert f"| simcse | {simcse['accuracy_true']:.3f} ± " in report
    bt = metrics["ppo"]["summary"][0]
    assert bt["name"] == "bt RM" and np.isfinite(bt["gold"]) and f"| bt RM | {bt['gold_start']:.2f} |" in report
    assert (tmp_path / "demo" / "sft" / "model" / "model.safetensors").exists()
    rounds = metrics["iterative"]["summary"]
    assert [(r["update"], r["round"]) for r in rounds] == [(u, i) for u in ("MetaRM", "plain update", "no update", "fresh labels") for i in (0, 1, 2)]
    last = rounds[2]
    assert f"| MetaRM | 2 | {last['gold']:.2f} ± {last['gold_std']:.2f} | {last['ranking_vs_gold']:.3f}" in report
    assert "Where MetaRM stands between no update and fresh labels" in report
    fresh = [row for r in metrics["iterative"]["rounds"] if r["name"] == "fresh labels" for row in r["rounds"]]
    assert [row["fresh_pairs"] for row in fresh] == [40, 40] and "MetaRM" in metrics["iterative"]["share"]
    assert set(metrics["stage_seconds"]) >= {"strength", "policy", "iterative"}
    gflop = metrics["stage_gflop"]                                   # the FLOP account: every stage computed something
    assert set(gflop) == set(metrics["stage_seconds"]) and all(v > 0 for k, v in gflop.items() if k != "world")
    assert gflop["strength"] > gflop["reward model"]                 # three voters and the deciles against one model
    assert "## What it cost" in report and f"| strength | {metrics['stage_seconds']['strength']:.0f} |" in report
    assert 0 < metrics["throughput_per_second"]["mfu"]["strength"] < 1


def test_a_killed_demo_resumes_to_the_same_report(demo_quick, tmp_path):
    "demo --quick killed three times, each after a stage has finished: the same metrics and weights as one run."
    whole = demo_quick
    found = run_with_kills(["demo", "--quick", "--quiet"], tmp_path / "demo", seed=7, window=whole.span / 8)
    assert len(found) == 3 and len({tuple(f) for f in found}) == 3, found
    killed = tmp_path / "demo"
    same_json(whole / "metrics.json", killed / "metrics.json")
    for name in ("rm/model/model.safetensors", "sft/model/model.safetensors", "world/world_config.json"):
        same_bytes(whole / name, killed / name)
    report = (killed / "report.md").read_text()
    for section in ("## 1. The world", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## What it cost"):
        assert report.count(section) == 1, section                 # every stage's part once, in its place
    assert report.index("## 3.") < report.index("## 4.") < report.index("## 7.")
