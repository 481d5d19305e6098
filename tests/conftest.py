"""Shared test settings: offline hub, one torch thread, the real-data sample's location."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

HH_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture
def hh_sample() -> Path:
    """The real hh-rlhf sample beside the project (never copied into it); skips where absent."""
    if not HH_SAMPLE.exists():
        pytest.skip(f"real hh-rlhf sample not found at {HH_SAMPLE}")
    return HH_SAMPLE


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory):
    """One `rmsecrets demo --quick` for the session (about a minute): its folder, and the seconds from its first finished
    stage to its end (the window the fault-injection test kills in)."""
    import subprocess
    import time
    out = tmp_path_factory.mktemp("demo") / "demo"
    log = out.parent / "demo.log"
    with open(log, "w") as f:
        p = subprocess.Popen(["rmsecrets", "demo", "--quick", "--quiet", "--out", str(out)], stdout=f, stderr=f,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})   # as tests/test_resume.py runs it
    first, t0 = None, time.time()
    while p.poll() is None and time.time() - t0 < 900:                 # a hang guard
        if first is None and (out / "stages").is_dir() and any((out / "stages").glob("*.json")): first = time.time()
        time.sleep(0.05)
    assert p.wait(max(1, 900 - (time.time() - t0))) == 0, log.read_text()[-3000:]
    return out, time.time() - (first or time.time())
