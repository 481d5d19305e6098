"""The run layer (12_stages): a stage is computed once and kept; a rerun loads it; a stage that failed is computed again;
setup stages run every time; the report is written from the results alone (12b_report)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from rmsecrets.report import Report, add_sections, section_text
from rmsecrets.core import Stage, load_results, save_results
from rmsecrets.stages import Run


def track(calls: list, fail_at: str | None = None):
    def setup(c):
        calls.append("setup"); c.words = c.text.split()
        return {"n_words": len(c.words)}
    def lengths(c):
        calls.append("lengths")
        return {"longest": max(map(len, c.words)), "arrays": {"lengths": np.array([len(w) for w in c.words], np.int16)}}
    def total(c):
        calls.append("total")
        if fail_at == "total": raise RuntimeError("killed")
        return {"total": int(c.results["lengths"]["arrays"]["lengths"].sum())}
    return [Stage("setup", setup, keep=False), Stage("lengths", lengths), Stage("total", total)]


def test_a_rerun_loads_the_kept_stages_and_computes_only_the_rest(tmp_path):
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        Run(tmp_path, SimpleNamespace(text="a bb ccc"))(track(calls, fail_at="total"))
    assert calls == ["setup", "lengths", "total"]
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["lengths.json", "lengths.safetensors"]
    calls.clear()
    run = Run(tmp_path, SimpleNamespace(text="a bb ccc"))
    results = run(track(calls))
    assert calls == ["setup", "total"]                       # the setup stage again, the kept one loaded, the failed one now
    assert results["total"] == {"total": 6} and results["setup"] == {"n_words": 3}
    assert results["lengths"]["arrays"]["lengths"].dtype == np.int16
    assert set(run.clock.seconds) == {"setup", "lengths", "total"} and run.saved["total"]["ran_on"]["device"]
    calls.clear()
    again = Run(tmp_path, SimpleNamespace(text="a bb ccc"))(track(calls))
    assert calls == ["setup"] and again["total"] == results["total"]


def test_a_fresh_run_goes_on_with_what_a_rerun_would_load(tmp_path):
    "Results pass through their files before the next stage reads them: tuples come back as lists in both runs."
    seen = []
    stages = [Stage("a", lambda c: {"pair": (1, 2)}), Stage("b", lambda c: seen.append(c.results["a"]["pair"]) or {})]
    Run(tmp_path, SimpleNamespace())(stages)
    (tmp_path / "stages" / "b.json").unlink()
    Run(tmp_path, SimpleNamespace())(stages)
    assert seen == [[1, 2], [1, 2]]


def test_results_files_are_json_and_safetensors(tmp_path):
    path = save_results(tmp_path / "s.json", {"accuracy": 0.75, "rows": [{"m": "bt"}],
                                              "arrays": {"x/better": np.arange(3, dtype=np.float32)}})
    assert json.loads(path.read_text()) == {"accuracy": 0.75, "rows": [{"m": "bt"}]}
    back = load_results(path)
    assert back["arrays"]["x/better"].tolist() == [0.0, 1.0, 2.0] and back["accuracy"] == 0.75
    assert "arrays" not in load_results(save_results(tmp_path / "t.json", {"n": 1}))


def test_the_report_is_written_from_results_alone(tmp_path):
    def section(r, c):
        yield f"## Lengths\n\nThe longest word has {r['longest']} letters."
    report = Report(tmp_path, "toy")
    add_sections(report, {"lengths": section, "missing": section}, {"lengths": {"longest": 3}}, None)
    assert report.write().read_text() == "# toy\n\n## Lengths\n\nThe longest word has 3 letters.\n"   # no results: no section
    assert section_text(section, {"longest": 4}, None) == "## Lengths\n\nThe longest word has 4 letters.\n"
