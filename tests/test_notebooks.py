"""The lessons as committed: executed by the current code, with figures, no errors, no progress-bar noise, and the
teaching apparatus every lesson has (objectives, the paper linked, what we saw, exercises with solutions, next)."""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
LESSONS = [p for p in NBS if p.stem != "index"]


def load(p: Path) -> dict:
    return json.loads(p.read_text())


def markdown(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def outputs(nb: dict):
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            for o in c.get("outputs", []):
                yield "".join(c["source"]), o


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_outputs_are_current(path):
    """The outputs come from the code as it is: `make notebooks` (and `SLOW=1`, `REAL=1`) after changing a notebook's code."""
    problems = notebooks.stale(load(path))
    assert not problems, f"{path.name}: {'; '.join(problems)} — run `{notebooks.advice(path, problems)}`"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_outputs_are_clean(path):
    nb = load(path)
    for src, o in outputs(nb):
        assert o["output_type"] != "error", f"{path.name}: a cell failed: {src[:80]!r}"
        text = "".join(o.get("text", ""))
        assert "\r" not in text and not re.search(r"\d+it/s\]|\|█", text), f"{path.name}: progress bars in {src[:60]!r}"
    plots = [c for c in nb["cells"] if c["cell_type"] == "code" and re.search(r"\bplot\w*\(|\bplt\.", "".join(c["source"]))
             and not notebooks.directives("".join(c["source"])) & notebooks.EXPORT]   # the lesson's own cells plot
    images = [o for _, o in outputs(nb) if "image/png" in o.get("data", {})]
    if plots: assert images, f"{path.name} plots its experiments but stores no figure"
    assert any(True for _ in outputs(nb)), f"{path.name} has no outputs: run `make notebooks NB={path.stem}`"


def test_notebooks_stay_small():
    total = sum(p.stat().st_size for p in NBS)
    assert total < 15e6, f"nbs/ holds {total / 1e6:.1f} MB of notebooks (at most 15): smaller figures"


def test_staleness_is_detected():
    nb = load(ROOT / "nbs/05_label_tricks.ipynb")
    nb["metadata"]["rmsecrets"] = notebooks.code_hashes(nb)       # as a run of its code leaves it
    assert notebooks.stale(nb) == []
    fast = next(c for c in nb["cells"] if c["cell_type"] == "code" and "slow" not in notebooks.directives("".join(c["source"])))
    fast["source"] = ["x = 1  # edited\n"] + fast["source"]
    assert notebooks.stale(nb) == ["fast cells changed since their outputs were made"]
    nb["metadata"]["rmsecrets"] = notebooks.code_hashes(nb)
    slow = next(c for c in nb["cells"] if c["cell_type"] == "code" and "slow" in notebooks.directives("".join(c["source"])))
    slow["source"] = slow["source"] + ["\n# edited"]
    assert len(notebooks.stale(nb)) == 1 and "slow" in notebooks.stale(nb)[0]   # a slow edit asks for SLOW=1 only
    del nb["metadata"]["rmsecrets"]
    assert len(notebooks.stale(nb)) == 3                            # never executed: fast, slow and real-model stale
    nb["metadata"]["rmsecrets"] = notebooks.code_hashes(nb)
    real = next(c for c in nb["cells"] if c["cell_type"] == "code" and "real" in notebooks.directives("".join(c["source"])))
    real["source"] = real["source"] + ["\n# edited"]
    (problem,) = notebooks.stale(nb)                                 # a real-model edit asks for REAL=1 only
    assert notebooks.advice(Path("nbs/05_label_tricks.ipynb"), [problem]) == "make notebooks NB=05_label_tricks REAL=1"


REAL_STAGES = {"03_training": "train.HH_REWARD_MODELS", "04_strength": "voters.HH_STRENGTH",
               "05_label_tricks": "contrastive.HH_LABEL_TRICKS", "06_contrastive": "contrastive.HH_LABEL_TRICKS",
               "07_policy": "policy.HH_SFT", "08_ppo": "ppo.HH_PPO", "09_metarm": "iterative.HH_METARM_ROUND",
               "10_iterative": "iterative.HH_METARM_ROUND"}


@pytest.mark.parametrize("stem", REAL_STAGES)
def test_lessons_run_their_stage_on_a_real_model(stem):
    """Lessons 03–10 end with "On a real model": its `#| real` cells wait for `REAL_MODEL = False` at the top, run
    the lesson's own stage of the real-model track, and the committed outputs show that stage's results and machine."""
    import importlib
    from rmsecrets.hh_demo import TRACK
    module, const = REAL_STAGES[stem].split(".")
    nb, stage = load(ROOT / "nbs" / f"{stem}.ipynb"), getattr(importlib.import_module(f"rmsecrets.{module}"), const)
    h = headings(nb)
    assert "## On a real model" in h and h.index("## On a real model") == h.index("## What we saw") - 1
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    switch = next(i for i, src in enumerate(code) if "REAL_MODEL" in src)
    assert "REAL_MODEL = False" in code[switch] and "guard_slow_cells(get_ipython())" in code[switch]
    real = [i for i, src in enumerate(code) if "real" in notebooks.directives(src)]
    assert real and switch < real[0] and stage in TRACK
    assert f"from rmsecrets.{module} import {const}" in code[real[0]] and f"real_model_stage({const})" in code[real[0]]
    stage = stage.name
    texts = ["".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", "")) for src, o in outputs(nb)
             if "real" in notebooks.directives(src)]
    assert any(f"stage {stage!r} of the real-model track" in t and "computed on" in t for t in texts), \
        f"{stem}: its real-model section has no outputs from a run: `make notebooks NB={stem} REAL=1`"


@pytest.mark.parametrize("path", [p for p in LESSONS if any("slow" in d for _, d in notebooks.code_cells(load(p)))],
                         ids=lambda p: p.stem)
def test_slow_cells_wait_for_the_switch_at_the_top(path):
    """"Run all" runs no slow experiment: the cell that sets `RUN_SLOW = False` and calls `guard_slow_cells` comes before
    the first slow cell (tests/test_slow_switch.py checks the guard; tests/test_fresh_install.py one lesson in a kernel)."""
    cells = notebooks.code_cells(load(path))
    switch = next(i for i, (src, _) in enumerate(cells) if "guard_slow_cells(get_ipython())" in src)
    assert "RUN_SLOW = False" in cells[switch][0]
    assert switch < min(i for i, (_, d) in enumerate(cells) if "slow" in d)


# --- the teaching apparatus of every lesson

def headings(nb: dict) -> list[str]:
    return [line for m in markdown(nb) for line in m.splitlines() if line.startswith("## ")]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_apparatus(path):
    nb = load(path)
    h = headings(nb)
    assert "".join(nb["cells"][1]["source"]).startswith("## Learning objectives"), f"{path.name}: objectives first"
    for name in ("## What we saw", "## Exercises", "## Next", "## Notes"):
        assert name in h, f"{path.name} has no '{name}' section"
    assert h.index("## What we saw") < h.index("## Exercises") < h.index("## Next") < h.index("## Notes") == len(h) - 1
    text = "\n".join(markdown(nb))
    exercises = text[text.index("## Exercises"):text.index("## Next")]
    assert exercises.count("<details><summary>Solution</summary>") >= 3, f"{path.name}: three exercises with solutions"
    assert exercises.count("<details>") == exercises.count("</details>")


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_paper_sections_are_linked(path):
    """Every "§" in a lesson's prose is inside the text of a link to the paper on arXiv."""
    for m in markdown(load(path)):
        m = re.sub(r"```.*?```|`[^`]*`", "", m, flags=re.S)
        unlinked = re.sub(r"\[[^\]]*\]\(https://arxiv\.org/abs/\d{4}\.\d{5}[^)]*\)", "", m)
        assert "§" not in unlinked, f"{path.name}: an unlinked §: {unlinked[max(0, unlinked.index('§') - 60):][:120]!r}"
