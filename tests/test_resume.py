"""Fault injection: every long command is killed with SIGKILL at seeded random moments after a checkpoint, rerun with the
same command until it ends, and compared with an uninterrupted run: the same weights, byte for byte, and the same
numbers. Also: one writer per folder, and a changed command refused.

Each run is a process of its own, forked from the test process (`Forked`): it pays no imports, and SIGKILL reaches it
and every process it forked (its voters' and seeds' workers) as it would reach `rmsecrets` started from a shell. The
uninterrupted `sft` and `train-rm` runs are the session's (`made`), which the other tests use as inputs too."""
import glob
import json
import random
from pathlib import Path

import pytest
from conftest import RM, SFT, Forked

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


def run_with_kills(args: list, out: Path, seed: int, window: float, kills: int = 3, timeout: float = 300) -> list:
    """Start the command; once a new checkpoint appears, wait a seeded random time in [0, window) s and SIGKILL its
    process group; `kills` times; then rerun it to the end. Returns what each kill found on disk."""
    rng, log, found = random.Random(seed), out.parent / f"{out.name}.log", []
    for _ in range(kills):
        before = markers(out)
        run = Forked([*args, "--out", out], log)
        run.wait_for(lambda: bool(markers(out) - before), timeout)
        run.sleep(rng.uniform(0, window))
        if run.poll() is not None: break                   # it finished first: nothing left to kill
        run.kill()
        found.append(sorted(markers(out)))
    Forked([*args, "--out", out], log).wait(timeout)
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


def run_whole(args: list, out: Path, timeout: float = 300) -> float:
    "Run the command to its end, uninterrupted; the seconds from its first checkpoint to its end."
    run = Forked([*args, "--out", out], out.parent / f"{out.name}.log")
    first = run.wait_for(lambda: bool(markers(out)), timeout)
    run.wait(timeout)
    return run.ended - first


COMMANDS = {   # name -> (arguments given the session's folder, the files an interrupted run must reproduce)
    "train-rm": (lambda d: ["train-rm", "--data", f"{d}/w", *RM],
                 [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "sft": (lambda d: ["sft", "--data", f"{d}/w", *SFT],
            [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "ppo": (lambda d: ["ppo", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model", "--prompts", f"{d}/w",
                       "--iterations", "16", "--save-every", "2", "--rollout-prompts", "8", "--mini-batch", "8",
                       "--eval-prompts", "4", "--eval-every", "4", "--critic-warmup", "2", "--progress", "false"],
            [("bytes", "policy/model.safetensors"), ("json", "metrics.json"), ("lines", "evals.jsonl"),
             ("lines", "history.jsonl")]),
    "strength": (lambda d: ["strength", "--data", f"{d}/w", "--n-voters", "6", "--max-steps", "20", "--save-every", "10"],
                 [("bytes", "annotated.jsonl"), ("json", "strength.json")]),
    "metarm": (lambda d: ["metarm", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                          "--meta-prompts", "8", "--max-steps", "40", "--save-every", "5", "--progress", "false"],
               [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("bytes", "meta_samples.jsonl")]),
    "iterate": (lambda d: ["iterate", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                           "--rounds", "3", "--meta-prompts", "6", "--rm-max-steps", "10", "--rm-save-every", "5",
                           "--ppo-iterations", "4", "--ppo-save-every", "2", "--ppo-critic-warmup", "1",
                           "--ppo-rollout-prompts", "8", "--ppo-mini-batch", "8", "--ppo-eval-prompts", "8",
                           "--ppo-eval-every", "0"],
                [("json", "rounds.json")] + [(kind, f"round_{r}/{f}") for r in (1, 2, 3) for kind, f in
                                             (("bytes", "reward_model/model.safetensors"), ("bytes", "ppo/policy/model.safetensors"))]),
}
SHARED = {"sft": "sft", "train-rm": "rm"}   # commands whose uninterrupted run is the session's


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_killed_command_resumes_to_the_same_result(made, command):
    args, compare = COMMANDS[command]
    args = args(made)
    whole = made / SHARED.get(command, f"{command}-whole")
    span = made.spans[SHARED[command]] if command in SHARED else run_whole(args, whole)   # first checkpoint to end
    found = run_with_kills(args, made / f"{command}-killed", seed=sorted(COMMANDS).index(command), window=span / 8)
    assert len(found) == 3 and all(found), found          # three kills, each after at least one checkpoint
    assert len({tuple(f) for f in found}) == 3, found     # at three different points of the run
    for kind, name in compare:
        {"bytes": same_bytes, "json": same_json, "lines": same_lines}[kind](whole / name, made / f"{command}-killed" / name)


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


def test_two_runs_on_one_folder(made, tmp_path):
    "The second run on a busy folder stops at once and says who holds it; the first ends as if alone."
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "300", "--batch-size", "8", "--eval-every", "0",
            "--progress", "false"]                          # long enough to be running when the second has started
    first = Forked([*args, "--out", tmp_path / "out"], tmp_path / "first.log")
    first.wait_for(lambda: (tmp_path / "out" / "run.json").exists(), 60)
    second = Forked([*args, "--out", tmp_path / "out"], tmp_path / "second.log")
    second.wait_for(lambda: False, 60)
    said = (tmp_path / "second.log").read_text().strip().splitlines()
    assert second.returncode == 2 and len(said) == 1 and "is being written by another run (pid" in said[0], said
    assert first.poll() is None, "the first run ended before the second was refused: the check proved nothing"
    first.wait(300)
    Forked([*args, "--out", tmp_path / "alone"], tmp_path / "alone.log").wait(300)
    same_bytes(tmp_path / "alone" / "model" / "model.safetensors", tmp_path / "out" / "model" / "model.safetensors")


def test_a_changed_command_is_refused_unless_overwrite(made, tmp_path, capsys):
    from rmsecrets.cli import main
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "2", "--progress", "false", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--lr", "0.01"]) == 2
    assert "lr: 0.001 there, 0.01 here" in capsys.readouterr().err
    assert main(args + ["--lr", "0.01", "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["lr"] == 0.01
