"""Fault injection: every long command is killed with SIGKILL at seeded random moments after a checkpoint, rerun with the
same command until it ends, and compared with an uninterrupted run: the same weights, byte for byte, and the same
numbers. Also: one writer per folder, and a changed command refused."""
import glob
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

WORLD = ["--n-train", "240", "--n-validation", "60", "--n-test", "20", "--n-demonstrations", "80", "--n-prompts", "40"]
MARKERS = ("checkpoints/step-*/trainer_state.json",       # the training loop's checkpoints (train-rm, sft, metarm, voters)
           "checkpoints/iteration-*/complete.json",        # PPO's
           "voters/*.safetensors",                         # strength: a finished voter
           "round.json", "rm_update/metrics.json",         # iterate: a finished round, a finished reward-model update
           "stages/*.json")                                # demo: a finished stage
TIMING = {"seconds", "cost_ratio", "stage_seconds", "stage_gflop", "throughput_per_second"}   # wall clock, not results
IGNORED = TIMING | {"out"}   # ... and the folder itself


def markers(out: Path) -> set:
    "Every checkpoint or finished unit of work in `out`, by relative path (new names appear as a run goes on)."
    found = (glob.glob(str(out / "**" / pattern), recursive=True) for pattern in MARKERS)   # glob skips folders renamed meanwhile
    return {str(Path(p).relative_to(out)) for paths in found for p in paths}


def start(args: list, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as f:
        return subprocess.Popen(["rmsecrets", *args, "--out", str(out)], stdout=f, stderr=f, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_to_end(args: list, out: Path, timeout: int = 900) -> float:
    "Run the command to its end; returns the seconds from its first checkpoint to its end (0 if it made none)."
    log, first = out.parent / f"{out.name}.log", None
    p, t0 = start(args, out, log), time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if first is None and markers(out): first = time.time()
        time.sleep(0.02)
    assert p.wait(max(1, timeout - (time.time() - t0))) == 0, log.read_text()[-3000:]
    return time.time() - first if first is not None else 0.0


def run_with_kills(args: list, out: Path, seed: int, window: float, kills: int = 3, timeout: int = 900) -> list:
    """Start the command; once a new checkpoint appears, wait a seeded random time in [0, window) s and SIGKILL its
    process group; `kills` times; then rerun it to the end. Returns what each kill found on disk."""
    rng, log, found = random.Random(seed), out.parent / f"{out.name}.log", []
    for _ in range(kills):
        before, t0 = markers(out), time.time()
        p = start(args, out, log)
        while p.poll() is None and not (markers(out) - before) and time.time() - t0 < timeout: time.sleep(0.02)
        time.sleep(rng.uniform(0, window))
        if p.poll() is not None: break                     # it finished first: nothing left to kill
        os.killpg(p.pid, signal.SIGKILL); p.wait()
        found.append(sorted(markers(out)))
    run_to_end(args, out, timeout)
    return found


def untimed(obj):
    "`obj` without its wall-clock entries and its own folder's name."
    if isinstance(obj, dict): return {k: untimed(v) for k, v in obj.items() if k not in IGNORED and not k.startswith("seconds_")}
    if isinstance(obj, list): return [untimed(v) for v in obj]
    return obj


def same_json(a: Path, b: Path):
    assert untimed(json.loads(a.read_text())) == untimed(json.loads(b.read_text())), (a, b)


def same_lines(a: Path, b: Path):
    rows = lambda p: [untimed(json.loads(line)) for line in p.read_text().splitlines()]
    assert rows(a) == rows(b), (a, b)


def same_bytes(a: Path, b: Path):
    assert a.read_bytes() == b.read_bytes(), (a, b)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    "A small world, an SFT policy and a reward model trained on it: the inputs of ppo, metarm and iterate."
    d = tmp_path_factory.mktemp("resume")
    subprocess.run(["rmsecrets", "world", "--out", str(d / "w"), *WORLD], check=True, capture_output=True)
    run_to_end(["sft", "--data", str(d / "w"), "--epochs", "1", "--progress", "false"], d / "sft")
    run_to_end(["train-rm", "--data", str(d / "w"), "--max-steps", "10", "--progress", "false"], d / "rm")
    return d


COMMANDS = {   # name -> (arguments given the fixture's folder, the files an interrupted run must reproduce)
    "train-rm": (lambda d: ["train-rm", "--data", f"{d}/w", "--max-steps", "150", "--batch-size", "8", "--save-every", "10",
                            "--eval-every", "50", "--progress", "false"],
                 [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "sft": (lambda d: ["sft", "--data", f"{d}/w", "--max-steps", "150", "--batch-size", "4", "--save-every", "10",
                       "--progress", "false"],
            [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "ppo": (lambda d: ["ppo", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model", "--prompts", f"{d}/w",
                       "--iterations", "24", "--save-every", "2", "--rollout-prompts", "8", "--mini-batch", "8",
                       "--eval-prompts", "4", "--eval-every", "4", "--critic-warmup", "2", "--progress", "false"],
            [("bytes", "policy/model.safetensors"), ("json", "metrics.json"), ("lines", "evals.jsonl"),
             ("lines", "history.jsonl")]),
    "strength": (lambda d: ["strength", "--data", f"{d}/w", "--n-voters", "8", "--max-steps", "30", "--save-every", "10"],
                 [("bytes", "annotated.jsonl"), ("json", "strength.json")]),
    "metarm": (lambda d: ["metarm", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                          "--meta-prompts", "8", "--max-steps", "60", "--save-every", "5", "--progress", "false"],
               [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("bytes", "meta_samples.jsonl")]),
    "iterate": (lambda d: ["iterate", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                           "--rounds", "3", "--meta-prompts", "6", "--rm-max-steps", "20", "--rm-save-every", "10",
                           "--ppo-iterations", "6", "--ppo-save-every", "2", "--ppo-critic-warmup", "1",
                           "--ppo-rollout-prompts", "8", "--ppo-mini-batch", "8", "--ppo-eval-prompts", "8",
                           "--ppo-eval-every", "0"],
                [("json", "rounds.json")] + [(kind, f"round_{r}/{f}") for r in (1, 2, 3) for kind, f in
                                             (("bytes", "reward_model/model.safetensors"), ("bytes", "ppo/policy/model.safetensors"))]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_killed_command_resumes_to_the_same_result(made, command):
    args, compare = COMMANDS[command]
    args = args(made)
    span = run_to_end(args, made / f"{command}-whole")     # from its first checkpoint to its end, uninterrupted
    found = run_with_kills(args, made / f"{command}-killed", seed=sorted(COMMANDS).index(command), window=span / 8)
    assert len(found) == 3 and all(found), found          # three kills, each after at least one checkpoint
    assert len({tuple(f) for f in found}) == 3, found     # at three different points of the run
    for kind, name in compare:
        {"bytes": same_bytes, "json": same_json, "lines": same_lines}[kind](made / f"{command}-whole" / name,
                                                                             made / f"{command}-killed" / name)


def test_a_killed_demo_resumes_to_the_same_report(demo_quick, tmp_path):
    "demo --quick killed three times, each after a stage has finished: the same metrics and weights as one run."
    whole, span = demo_quick
    found = run_with_kills(["demo", "--quick", "--quiet"], tmp_path / "demo", seed=7, window=span / 8)
    assert len(found) == 3 and len({tuple(f) for f in found}) == 3, found
    killed = tmp_path / "demo"
    same_json(whole / "metrics.json", killed / "metrics.json")
    for name in ("rm/model/model.safetensors", "sft/model/model.safetensors", "world/world_config.json"):
        same_bytes(whole / name, killed / name)
    report = (killed / "report.md").read_text()
    for section in ("## 1. The world", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## What it cost"):
        assert report.count(section) == 1, section                 # every stage's part once, in its place
    assert report.index("## 3.") < report.index("## 4.") < report.index("## 7.")


def test_two_runs_on_one_folder(made, tmp_path):
    "The second run on a busy folder stops at once and says who holds it; the first ends as if alone."
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "1500", "--batch-size", "8", "--eval-every", "0",
            "--progress", "false"]                          # long enough to be running when the second has started
    log = tmp_path / "first.log"
    first = start(args, tmp_path / "out", log)
    while not (tmp_path / "out" / "run.json").exists(): time.sleep(0.02)
    t0 = time.time()
    second = subprocess.run(["rmsecrets", *args, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "is being written by another run (pid" in second.stderr, second.stderr[-2000:]
    assert len(second.stderr.strip().splitlines()) == 1 and time.time() - t0 < 60     # at once: no work of its own
    assert first.wait(900) == 0, log.read_text()[-3000:]
    whole = tmp_path / "alone"
    run_to_end(args, whole)
    same_bytes(whole / "model" / "model.safetensors", tmp_path / "out" / "model" / "model.safetensors")


def test_a_changed_command_is_refused_unless_overwrite(made, tmp_path):
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "2", "--progress", "false"]
    run_to_end(args, tmp_path / "out")
    changed = subprocess.run(["rmsecrets", *args, "--lr", "0.01", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert changed.returncode == 2 and "lr: 0.001 there, 0.01 here" in changed.stderr, changed.stderr
    run_to_end(args + ["--lr", "0.01", "--overwrite"], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["lr"] == 0.01
