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
