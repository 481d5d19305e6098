"""The package's modules import only from modules of earlier notebooks: no circle, no upward import.

`python tests/test_imports.py` prints the graph."""
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebook_order() -> list[str]:
    "The modules in the order of their notebooks (the `#| default_exp` of nbs/NN_*.ipynb, sorted by file name)."
    order = []
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        found = [m.group(1) for c in cells if c["cell_type"] == "code"
                 for m in [re.search(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"]))] if m]
        order += found[:1]
    return order


def imports_of(module: str) -> set[str]:
    "The package modules `module` imports, at the top or inside a function."
    deps = set()
    for node in ast.walk(ast.parse((ROOT / "rmsecrets" / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            deps.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rmsecrets."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rmsecrets.")}
    return deps - {module, "_modidx"}


def test_no_module_imports_from_a_later_notebook():
    order = notebook_order()
    assert order[:5] == ["core", "world", "experiments", "data", "model"] and order[-7:] == ["stages", "report", "demo", "hh", "hh_demo", "ledger", "cli"]
    upward = {m: sorted(d for d in imports_of(m) if d in order and order.index(d) > order.index(m)) for m in order}
    assert not any(upward.values()), {m: d for m, d in upward.items() if d}


def test_a_lesson_s_real_model_runner_loads_no_later_lesson():
    """Lessons 03–10 import `rmsecrets.hh` for their real-model section; importing it loads no module of the paper's
    lessons after 03_training (the stages come from the lessons themselves, the whole track from `hh_demo`), only the
    house's machinery (scale, stages, report)."""
    import subprocess, sys
    code = "import sys, rmsecrets.hh; print(' '.join(sorted(m.split('.')[1] for m in sys.modules if m.startswith('rmsecrets.'))))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    order = notebook_order()
    later = {m for m in order if order.index("train") < order.index(m) < order.index("scale")}   # 04 to 10
    assert "hh" in loaded and later and not loaded & later, sorted(loaded & later)
    assert "hh_demo" not in loaded and {"contrastive", "iterative", "voters", "ppo"} <= imports_of("hh_demo")


if __name__ == "__main__":
    order = notebook_order()
    for m in order:
        print(f"{m:12s} <- {', '.join(d for d in order if d in imports_of(m)) or '-'}")
