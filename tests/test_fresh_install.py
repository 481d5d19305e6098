"""A lesson from a fresh install, as on Colab: the built wheel with only the extras the notebooks' install cells name,
in a new virtual environment, a lesson run top to bottom ("Run all") in a Jupyter kernel from a folder outside the
checkout. What `nbdev_test` (which runs every lesson's fast path from the checkout) cannot show: the package works
from its wheel with the course extra alone, the install cell does nothing outside Colab, and under "Run all" the slow
experiments and the real-model section stay off without anyone touching their switches. Every version comes from
requirements.lock (as `make install` takes them); the kernel's harness (nbclient, ipykernel) stands in for Colab's
Jupyter; nothing else is installed."""
import json
import os
import re
import shutil
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402
from conftest import run_process  # noqa: E402
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
LESSON = ROOT / "nbs" / "06_contrastive.ipynb"   # seconds to run; slow cells and a real-model section, both held back
LOCK = ROOT / "requirements.lock"

RUNNER = r'''
import sys, json, os
import nbformat
from nbclient import NotebookClient
def run(path):
    nb = nbformat.read(path, as_version=4)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        error = ""
    except Exception as e:
        error = f"{type(e).__name__}: {str(e)[-3000:]}"
    texts = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return {"path": path, "error": error, "texts": texts}
probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys, rmsecrets; print(sys.prefix, rmsecrets.__file__)")])
NotebookClient(probe, timeout=120, kernel_name="python3").execute()
print(json.dumps({"kernel": probe.cells[0].outputs[0]["text"], "runs": [run(p) for p in sys.argv[1:]]}))
'''


def install_extras() -> set:
    """The extras of `rmsecrets[...]` in every notebook's install cell (they must all name the same)."""
    found = {}
    for p in NBS:
        cells = json.loads(p.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        if not code: continue
        m = re.search(r'"rmsecrets(?:\[([\w,]+)\])? @ git\+https://github.com/rmsecrets/rmsecrets"', code[0])
        assert m and "pip" in code[0], f"{p.name}: its first code cell is not the install cell"
        found[p.name] = frozenset((m.group(1) or "").split(",")) - {""}
    assert len(set(found.values())) == 1, found
    return set(next(iter(found.values())))


def test_the_install_cells_name_what_the_notebooks_import():
    assert install_extras() == {"course"}


def test_a_lesson_runs_from_a_fresh_install(tmp_path, wheel):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)        # no system site-packages: only what is installed below
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(LOCK)]
    extras = ",".join(sorted(install_extras()))
    for args in (["torch"], [f"rmsecrets[{extras}] @ {wheel.as_uri()}"], ["nbclient", "ipykernel"]):   # torch first
        run_process(pip + args, timeout=600)

    course = tmp_path / "course"               # outside the checkout
    course.mkdir()
    shutil.copy(LESSON, course / LESSON.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "IN_TEST", "RMSECRETS_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="agg",
               PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}", HOME=str(tmp_path))
    (tmp_path / "runner.py").write_text(RUNNER)
    done = run_process([py, tmp_path / "runner.py", course / LESSON.name], timeout=600, cwd=course, env=env, clean_env=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kernel"].startswith(str(env_dir)) and str(env_dir) in report["kernel"].split()[1], report["kernel"]
    (result,) = report["runs"]
    assert not result["error"], result["error"]
    texts = "\n".join(result["texts"])
    cells = notebooks.code_cells(json.loads(LESSON.read_text()))
    n_slow, n_real = (sum(kind in d for _, d in cells) for kind in ("slow", "real"))
    assert n_slow and n_real
    assert texts.count("slow experiment skipped") == n_slow            # "Run all" ran no slow experiment
    assert texts.count("real-model section skipped") == n_real         # ... and no real-model cell
