"""Execute the lessons in place, so that they are committed with their outputs (`make notebooks`).

    make notebooks                         # every notebook's fast cells; slow cells keep their outputs
    make notebooks SLOW=1                  # ... and every slow experiment (about 45 min on two cores)
    make notebooks NB=05_label_tricks SLOW=1   # one lesson (or several, space-separated), slow cells included
    make notebooks NB=05_label_tricks REAL=1   # ... its "On a real model" section (`#| real` cells) included
    python scripts/notebooks.py --check    # exit 1 if any notebook's outputs are stale

Each notebook runs in a fresh process (nbdev's in-process shell, execnb, as `nbdev_test` uses), two at a time,
one torch thread each, progress bars off. The outputs are written back into the notebook as it is on disk when
the run ends (its markdown may have been edited meanwhile; its code may not), then `nbdev_clean` normalises it.

Staleness. The notebook's metadata keeps three hashes from the run that made its outputs: `fast`, of every code
cell that is neither `#| slow` nor `#| real`, `slow`, of the slow cells and the `#| export` cells they call, and
`real`, of the real-model cells and the export cells. A change to a fast cell asks for a fast re-run (seconds); a
slow experiment or a real-model section re-runs only when its own code or its notebook's exported code changed. `--check` (and tests/test_notebooks.py in CI) compares them with the code as it is.
"""
import argparse
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
META = "rmsecrets"                    # the notebook-level metadata key (settings.ini: allowed_metadata_keys)
EXPORT = {"export", "exports", "exporti"}


def directives(source: str) -> set:
    """The words of a cell's leading `#|` lines (`#| export`, `#| slow`, `#| eval: false` → {"eval:", "false"})."""
    words = set()
    for line in source.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith("#|"): break
        words |= set(s[2:].replace(",", " ").split())
    return words


def code_cells(nb: dict) -> list[tuple[str, set]]:
    return [(src, directives(src)) for c in nb["cells"] if c["cell_type"] == "code"
            for src in ["".join(c["source"])]]


def _digest(sources: list[str]) -> str:
    return hashlib.sha256("\0".join(sources).encode()).hexdigest()[:16]


def code_hashes(nb: dict) -> dict:
    """{"fast": hash of the cells a fast run executes, "slow": hash of the slow cells and the exported code (None without
    slow cells), "real": the same for the real-model cells}."""
    cells = code_cells(nb)
    some = {k: any(k in d for _, d in cells) for k in ("slow", "real")}
    return {"fast": _digest([s for s, d in cells if not d & {"slow", "real"}]),
            **{k: _digest([s for s, d in cells if k in d or d & EXPORT]) if some[k] else None for k in ("slow", "real")}}


def stale(nb: dict) -> list[str]:
    """What in this notebook's outputs no longer matches its code: [] when they are current."""
    stored, now = nb.get("metadata", {}).get(META, {}), code_hashes(nb)
    problems = []
    if stored.get("fast") != now["fast"]: problems.append("fast cells changed since their outputs were made")
    if now["slow"] and stored.get("slow") != now["slow"]:
        problems.append("slow experiments (or the exported code they call) changed since their outputs were made")
    if now["real"] and stored.get("real") != now["real"]:
        problems.append("the real-model section (or the exported code it calls) changed since its outputs were made")
    return problems


def advice(path: Path, problems: list[str]) -> str:
    """The command that makes a stale notebook current."""
    flags = "".join(f" {f}=1" for f, word in (("SLOW", "slow"), ("REAL", "real-model")) if any(word in p for p in problems))
    return f"make notebooks NB={path.stem}{flags}"


def _locked():
    """One writer at a time (held while a notebook's outputs are merged into the file)."""
    lock = open(Path(tempfile.gettempdir()) / "rmsecrets-notebooks.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def execute_one(path: Path, slow: bool, real: bool = False) -> None:
    """Run one notebook in this process and write its outputs back (the child side of `execute`)."""
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from fastcore.basics import AttrDict
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    os.environ.pop("IN_TEST", None)
    if slow: os.environ["RMSECRETS_RUN_SLOW"] = "1"
    if real: os.environ["RMSECRETS_REAL_MODEL"] = "1"
    nb = read_nb(path)
    ran = set()                                               # the cells executed (by identity)

    def skip(cell):                                           # execnb's preproc: True skips the cell
        if cell.cell_type != "code": return True
        d = directives(cell.source)
        if ("slow" in d and not slow) or ("real" in d and not real) or "eval:" in d and "false" in d: return True
        cell.outputs = []                                     # execnb keeps old outputs when a cell prints nothing
        ran.add(id(cell))
        return False

    class Shell(CaptureShell):
        """execnb's shell, except that a cell ending in ";" keeps its printed output, as in Jupyter (execnb
        drops it; the ";" should only hide the value of the last expression). execnb<0.2's `_run`, so changed."""
        def _run(self, raw_cell, store_history=False, silent=False, shell_futures=True, cell_id=None,
                 stdout=True, stderr=True, display=True, verbose=False):
            with capture_output(display=display, stdout=stdout and not verbose, stderr=stderr and not verbose) as c:
                result = InteractiveShell.run_cell(self, raw_cell, store_history, silent,
                                                   shell_futures=shell_futures, cell_id=cell_id)
            return AttrDict(result=result, stdout=c.stdout, stderr=c.stderr, display_objects=c.outputs,
                            exception=result.error_in_exec or result.error_before_exec,
                            quiet=raw_cell.rstrip().endswith(";"))

    shell = Shell(path, mpl_format="png")
    shell.run_cell("import matplotlib; matplotlib.rcParams['figure.dpi'] = 80")   # small PNGs
    os.chdir(path.parent)
    shell.run_all(nb, exc_stop=True, preproc=skip)
    executed = [c for c in nb.cells if c.cell_type == "code"]

    with _locked():                                           # merge into the file as it is now: markdown cells
        disk = json.loads(path.read_text())                   # may have been added or edited meanwhile
        if [s for s, _ in code_cells(disk)] != [c.source for c in executed]:
            raise SystemExit(f"{path}: its code changed while it ran; run it again")
        for c, run in zip([c for c in disk["cells"] if c["cell_type"] == "code"], executed):
            if id(run) in ran:
                c["outputs"] = [dict(o) for o in run.outputs]
                c["execution_count"] = None
        hashes, old = code_hashes(disk), disk["metadata"].get(META, {})
        disk["metadata"][META] = {"fast": hashes["fast"], "slow": hashes["slow"] if slow else old.get("slow"),
                                  "real": hashes["real"] if real else old.get("real")}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(disk, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        subprocess.run(["nbdev_clean", "--fname", str(path)], check=True, cwd=ROOT)


def execute(path: Path, slow: bool, real: bool = False) -> tuple[Path, float, str]:
    """Run one notebook in a fresh process; (path, seconds, error text or "")."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="agg",
               PYTHONWARNINGS="ignore")
    t = time.time()
    r = subprocess.run([sys.executable, __file__, "--one", str(path)] + (["--slow"] if slow else []) + (["--real"] if real else []),
                       env=env, capture_output=True, text=True)
    return path, time.time() - t, "" if r.returncode == 0 else (r.stdout + r.stderr)[-4000:]


def notebooks(names: list[str]) -> list[Path]:
    paths = sorted(NBS.glob("*.ipynb"))
    if not names: return paths
    chosen = [p for p in paths if p.stem in names or p.name in names or str(p) in names]
    missing = set(names) - {p.stem for p in chosen} - {p.name for p in chosen} - {str(p) for p in chosen}
    if missing: raise SystemExit(f"no such notebook in {NBS}: {', '.join(sorted(missing))}")
    return chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to run (stems such as 05_label_tricks); default: all")
    ap.add_argument("--slow", action="store_true", help="also run the slow experiments")
    ap.add_argument("--real", action="store_true", help='also run the "On a real model" sections (`#| real` cells)')
    ap.add_argument("--check", action="store_true", help="only report stale notebooks; exit 1 if any")
    ap.add_argument("--workers", type=int, default=2, help="notebooks run at once (one torch thread each)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one: return execute_one(Path(a.one).resolve(), a.slow, a.real)
    paths = notebooks(a.names)
    if a.check:
        bad = [(p, s) for p in paths for s in [stale(json.loads(p.read_text()))] if s]
        for p, s in bad:
            print(f"{p.relative_to(ROOT)}: {'; '.join(s)} — run `{advice(p, s)}`")
        raise SystemExit(1 if bad else 0)
    paths.sort(key=lambda p: -p.stat().st_size)               # the long ones first
    failed, t0 = [], time.time()
    with ThreadPoolExecutor(a.workers) as pool:
        for path, secs, err in pool.map(lambda p: execute(p, a.slow, a.real), paths):
            print(f"{path.name:28s} {secs:7.1f} s  {'FAILED' if err else 'ok'}", flush=True)
            if err: failed.append((path, err))
    print(f"{len(paths)} notebooks in {time.time() - t0:.0f} s (fast cells{', slow cells' * a.slow}{', real-model sections' * a.real})")
    for path, err in failed: print(f"\n== {path.name}\n{err}", file=sys.stderr)
    if failed: raise SystemExit(1)


if __name__ == "__main__":
    main()
