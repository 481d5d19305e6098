"""Killing a run and comparing what it leaves (tests/test_resume.py, tests/test_demo.py): the checkpoints a run writes
as it goes, SIGKILL at seeded random moments after one, and comparisons of two runs' files without their wall-clock
entries."""
import glob
import json
import random
from pathlib import Path

from conftest import Forked

MARKERS = ("checkpoints/step-*/trainer_state.json",       # training checkpoints (train-rm, sft, metarm, voters, PPO)
           "voters/*.json",                                # strength: a finished voter
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
