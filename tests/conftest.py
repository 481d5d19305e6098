"""Shared test settings and artefacts.

Settings: the hub offline; one torch thread in every test, restored after it; with CI=true a skip fails the run
(a missing dependency, packaged model or data file is an install fault there, not a reason to test less).

Processes: `run_process` runs a command in a session of its own and kills it with every process below it when it
runs past its timeout (killing `accelerate launch` alone leaves its ranks running, holding the port and the CPU);
`accelerate_launch` gives every launch a free port; whatever a test started and left running is killed when it ends.

Artefacts made once per session and shared (`made`, `demo_quick`, `wheel`): the small world, an SFT policy and a
reward model trained on it, the quick demo, the built wheel. Each is made by the command a user runs: in this process
(`cli`), or in a process forked from it (`Forked`) where the SIGKILL tests compare a killed run with it.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "agg")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


from rmsecrets.data import hh_sample as _find_hh_sample  # noqa: E402

# shared/data/hh-rlhf/… above the checkout (if none has it: where it would be, beside the checkout)
HH_SAMPLE = _find_hh_sample() or ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


# ---------------------------------------------------------------- a skip in CI is a failure

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = ("skipped in CI (CI=true), where every dependency, packaged model and data file must be present: "
                           + reason)


# ---------------------------------------------------------------- threads: one per test, restored after

@contextlib.contextmanager
def torch_threads(n: int = 1):
    "torch computes on `n` threads inside the block; the count before it is restored after it."
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try: yield
    finally: torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_for_the_session():
    """Every test and fixture computes on one torch thread, as every process the tests start does (OMP_NUM_THREADS=1):
    the numbers of a test do not depend on which tests ran before it, nor on which fixture made its inputs."""
    with torch_threads(1): yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    "... and a test that changes the count leaves the next one its one thread."
    with torch_threads(1): yield


# ---------------------------------------------------------------- processes that cannot hang or collide

_STARTED: list[subprocess.Popen] = []   # started by run_process/start_process: killed if a test leaves them running


def _kill_tree(p: subprocess.Popen) -> None:
    """SIGKILL to the process, its process group and every process below it, with their groups (torchrun starts each
    rank in a session of its own, out of the launcher's group), then reap it."""
    import psutil
    try: below = psutil.Process(p.pid).children(recursive=True)   # before the kill: orphans leave the tree
    except psutil.NoSuchProcess: below = []
    for pid in [p.pid] + [c.pid for c in below]:
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try: kill()
            except (ProcessLookupError, PermissionError): pass
    try: p.wait(10)
    except subprocess.TimeoutExpired: pass


def start_process(cmd: list, *, log: Path | None = None, env: dict | None = None, cwd=None,
                  clean_env: bool = False) -> subprocess.Popen:
    """Popen in a session (and so a process group) of its own, output to `log` (or pipes), with this process's
    environment updated by `env` (`clean_env`: `env` alone); killed, with every process below it, at the end of the
    test if it is still running."""
    out = open(log, "a") if log else subprocess.PIPE
    try:
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                             text=True, start_new_session=True, cwd=cwd,
                             env=dict(env or {}) if clean_env else {**os.environ, **(env or {})})
    finally:
        if log: out.close()
    _STARTED.append(p)
    return p


def run_process(cmd: list, *, timeout: float, env: dict | None = None, cwd=None, check: bool = True,
                clean_env: bool = False) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)` with a timeout that kills every process it started (a
    launcher's ranks, a pool's workers) and fails the test; `check`: a non-zero exit fails it too, with stderr."""
    p = start_process(cmd, env=env, cwd=cwd, clean_env=clean_env)
    try: stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(p)
        stdout, stderr = p.communicate()
        pytest.fail(f"ran past its {timeout:.0f} s and was killed, with every process it started: "
                    f"{' '.join(map(str, cmd))}\n{(stderr or '')[-3000:]}")
    if check: assert p.returncode == 0, f"exit status {p.returncode}: {' '.join(map(str, cmd))}\n{stderr[-3000:]}"
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)


def free_port() -> int:
    "A TCP port nobody listens on now (the OS picks it)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args, processes: int = 2, timeout: float = 300,
                      env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` of `args` (a script, or `-m module ...`) on `processes` CPU processes (gloo), one torch
    thread each, on a free port: two launches at once do not meet on accelerate's default port 29500."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", *args]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return run_process(cmd, timeout=timeout, env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
                                                  "PYTHONPATH": pythonpath, **(env or {})})


@pytest.fixture(autouse=True)
def no_process_left_behind():
    "Whatever a test started and left running is killed, with everything it started, when the test ends."
    n = len(_STARTED)
    _FORKED.clear()
    yield
    for p in _STARTED[n:]:
        if p.poll() is None: _kill_tree(p)
    del _STARTED[n:]
    for run in _FORKED:
        if run.poll() is None: run.kill()
    _FORKED.clear()


class Forked:
    """`rmsecrets ARGS` in a child forked from this process: a process of its own (its own session, so a kill of its
    group reaches the workers it forks too), output appended to `log`, one torch thread. It pays no imports, which
    is most of a small command's time; `run_process(["rmsecrets", ...])` is the command as a shell starts it. (The
    child has this process's modules but only the calling thread, and writes to new streams of its own.)"""
    def __init__(self, args: list, log: Path):
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:   # the child: run the command, then leave without returning into pytest
            code = 1
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                torch.set_num_threads(1)
                from rmsecrets.cli import main
                code = main([str(a) for a in args])
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try: sys.stdout.flush(); sys.stderr.flush()
                finally:
                    _save_coverage()
                    os._exit(code)
        self.pid, self.args, self.log, self.returncode, self.ended = pid, args, Path(log), None, None
        _FORKED.append(self)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid: self.returncode, self.ended = os.waitstatus_to_exitcode(status), time.time()
        return self.returncode

    def wait_for(self, condition, timeout: float) -> float:
        "Poll until `condition()` holds or the run ends; the time it held (or the run ended)."
        t0 = time.time()
        while not condition() and self.poll() is None:
            if time.time() - t0 > timeout: self._fail(f"waited {timeout:.0f} s for a checkpoint")
            time.sleep(0.02)
        return time.time()

    def sleep(self, seconds: float) -> None:
        "Sleep up to `seconds`, less if the run ends first."
        end = time.time() + seconds
        while time.time() < end and self.poll() is None: time.sleep(0.02)

    def wait(self, timeout: float) -> None:
        "Wait for its end, which must be a success."
        self.wait_for(lambda: False, timeout)
        assert self.returncode == 0, f"exit status {self.returncode}: rmsecrets {' '.join(map(str, self.args))}\n" \
                                     + self.log.read_text()[-3000:]

    def kill(self) -> None:
        "SIGKILL to its process group."
        try: os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        while self.poll() is None: time.sleep(0.01)

    def _fail(self, what: str):
        self.kill()
        pytest.fail(f"{what}; killed: rmsecrets {' '.join(map(str, self.args))}\n{self.log.read_text()[-3000:]}")


_FORKED: list[Forked] = []


def _save_coverage() -> None:
    "Under `make coverage`: save what this forked process measured (os._exit skips coverage's own save at exit)."
    coverage = sys.modules.get("coverage")
    cov = coverage.Coverage.current() if coverage is not None and hasattr(coverage, "Coverage") else None
    if cov is not None:
        cov.stop()
        cov.save()


def cli(*args) -> None:
    "`rmsecrets ARGS` in this process (`cli.main`), which must succeed."
    from rmsecrets.cli import main
    assert main([str(a) for a in args]) == 0, args


# ---------------------------------------------------------------- artefacts made once per session

@pytest.fixture
def hh_sample() -> Path:
    """The real hh-rlhf sample beside the project (never copied into it)."""
    if not HH_SAMPLE.exists(): pytest.skip(f"real hh-rlhf sample not found at {HH_SAMPLE}")
    return HH_SAMPLE


WORLD = ["--n-train", "240", "--n-validation", "60", "--n-test", "20", "--n-demonstrations", "160", "--n-prompts", "40"]
SFT = ["--max-steps", "60", "--batch-size", "8", "--save-every", "10", "--progress", "false"]
RM = ["--max-steps", "60", "--batch-size", "8", "--save-every", "10", "--eval-every", "20", "--max-length", "64",
      "--progress", "false"]


class Folder(type(Path())):
    "A run's folder, with what was measured while it was made."
    spans: dict


def _run_measured(args: list, out: Path, timeout: float = 600) -> float:
    "Run the command forked, to its end; the seconds from its first finished stage or checkpoint to its end."
    run = Forked([*args, "--out", out], out.parent / f"{out.name}.log")
    first = run.wait_for(lambda: any(out.glob("stages/*.json")) or any(out.glob("checkpoints/*/*.json")), timeout)
    run.wait(timeout)
    return run.ended - first


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Folder:
    """The session's small world (`w/`), an SFT policy (`sft/`) and a reward model (`rm/`) trained on it by the
    command line, checkpointing as they go: the inputs of ppo, metarm and iterate, and the uninterrupted references
    of the killed `sft` and `train-rm` runs of tests/test_resume.py (`spans`: first checkpoint to end, in seconds)."""
    d = Folder(tmp_path_factory.mktemp("made"))
    cli("world", "--out", d / "w", *WORLD)
    d.spans = {name: _run_measured([command, "--data", d / "w", *flags], d / name)
               for name, command, flags in (("sft", "sft", SFT), ("rm", "train-rm", RM))}
    return d


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory) -> Folder:
    """One `rmsecrets demo --quick` for the session: its folder (the report, metrics and models of every stage), and
    `span`, the seconds from its first finished stage to its end."""
    out = Folder(tmp_path_factory.mktemp("demo") / "demo")
    out.span = _run_measured(["demo", "--quick", "--quiet"], out)
    return out


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The package built as a wheel from a clean copy of the checkout (no build/ or egg-info can supply a file)."""
    import shutil
    d = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, d / "src", ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "nbs", "tests", "benchmarks",
                                                                   "_docs", "__pycache__", "demo", "world", "runs"))
    run_process([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", d, d / "src"],
                timeout=300)
    (built,) = d.glob("rmsecrets-*.whl")
    return built
