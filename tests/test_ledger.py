"""The claims ledger: at least 14 claims, each judged on at least five paired seeds under two reduction orders, and
the README's and the lesson's ledger written from the stored results as they are now."""
import json
import shutil
from pathlib import Path

import pytest

from rmsecrets.cli import LEDGER_RESULTS, main
from rmsecrets.ledger import CLAIMS, check_ledger, judge, load_runs, write_ledger

ROOT = Path(__file__).resolve().parent.parent
RESULTS = [ROOT / p for p in LEDGER_RESULTS]


def test_the_stored_results_judge_every_claim_on_five_paired_seeds_under_two_orders():
    runs = load_runs(RESULTS)
    assert len(CLAIMS) >= 14
    orders = {(r["reduction_order"]["instruction_set"], r["reduction_order"]["threads"], r["reduction_order"]["workers"])
              for r in runs}
    assert len(orders) == 2, orders                      # two reduction orders, not one run stored twice
    assert all(r["seeds"].keys() == runs[0]["seeds"].keys() for r in runs)   # the same worlds under both
    for claim in CLAIMS:
        row = judge(claim, runs)
        assert row["n"] >= 5 and row["lo"] <= row["diff"] <= row["hi"], claim.contrast
        assert row["verdict"] in ("better", "worse", "no detectable difference")
        assert len(row["words"]) == 2


def test_the_readme_and_the_lesson_carry_the_ledger_of_the_stored_results():
    stale = check_ledger(RESULTS, ROOT / "README.md", ROOT / "nbs" / "13d_ledger.ipynb")
    assert not stale, f"{stale}: run `rmsecrets ledger write` from the project's root"


def test_the_check_fails_when_a_stored_result_changes(tmp_path):
    for p in (*RESULTS, ROOT / "README.md", ROOT / "nbs" / "13d_ledger.ipynb"): shutil.copy(p, tmp_path / p.name)
    results = [tmp_path / p.name for p in RESULTS]
    args = ["ledger", "check", "--results", *map(str, results), "--readme", str(tmp_path / "README.md"),
            "--page", str(tmp_path / "13d_ledger.ipynb")]
    assert main(args) == 0
    stored = json.loads(results[0].read_text())
    stored["seeds"]["2"]["truth/flip"] += 0.05          # one world's Flip accuracy moves
    results[0].write_text(json.dumps(stored))
    with pytest.raises(SystemExit, match="is not the one"): main(args)
    write_ledger(results, tmp_path / "README.md", tmp_path / "13d_ledger.ipynb")
    assert main(args) == 0
