"""The lessons from a fresh install, as on Colab: the built wheel with only the extras the notebooks' install cells
name, in a new virtual environment, every notebook run top to bottom ("Run all") in a Jupyter kernel, from a folder
outside the checkout (so the hh-rlhf sample is not found and its cells must skip cleanly). The slow experiments
must stay off without anyone touching the switch. torch comes first, pinned as `make install` pins it, and the
kernel's harness (nbclient, ipykernel) stands in for Colab's Jupyter; nothing else is installed."""
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
TORCH = "torch==2.13.0"                        # as in the Makefile: an unpinned torch pulls GB of CUDA packages

RUNNER = r'''
import sys, json, os
from concurrent.futures import ThreadPoolExecutor
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
with ThreadPoolExecutor(2) as pool:
    print(json.dumps({"kernel": probe.cells[0].outputs[0]["text"], "runs": list(pool.map(run, sys.argv[1:]))}))
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


def test_notebooks_run_from_a_fresh_install(tmp_path):
    src = tmp_path / "src"                     # a clean copy: no build/ or egg-info can supply a file
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "nbs", "tests", "benchmarks",
                                                             "_docs", "__pycache__", "demo", "world", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("rmsecrets-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)        # no system site-packages: only what is installed below
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    extras = ",".join(sorted(install_extras()))
    for args in ([TORCH], [f"rmsecrets[{extras}] @ {wheel.as_uri()}"], ["nbclient>=0.10", "ipykernel>=6"]):
        done = subprocess.run(pip + args, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    course = tmp_path / "course"               # outside the checkout: the shared hh-rlhf sample is not above it
    course.mkdir()
    for p in NBS: shutil.copy(p, course / p.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "IN_TEST", "RMSECRETS_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="agg",
               PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}", HOME=str(tmp_path))
    (tmp_path / "runner.py").write_text(RUNNER)
    done = subprocess.run([py, str(tmp_path / "runner.py")] + [str(course / p.name) for p in NBS],
                          capture_output=True, text=True, env=env, cwd=course)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kernel"].startswith(str(env_dir)) and str(env_dir) in report["kernel"].split()[1], report["kernel"]
    results = report["runs"]
    failed = {Path(r["path"]).name: r["error"] for r in results if r["error"]}
    assert not failed, failed
    skipped = {Path(r["path"]).name for r in results if any("slow experiment skipped" in t for t in r["texts"])}
    with_slow = {p.name for p in NBS if any("slow" in d for _, d in notebooks.code_cells(json.loads(p.read_text())))}
    assert skipped == with_slow                # "Run all" ran no slow experiment
    skipped = {Path(r["path"]).name for r in results if any("real-model section skipped" in t for t in r["texts"])}
    with_real = {p.name for p in NBS if any("real" in d for _, d in notebooks.code_cells(json.loads(p.read_text())))}
    assert len(with_real) == 8 and skipped == with_real   # ... and no real-model section
