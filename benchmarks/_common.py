"""What every benchmark script shares: offline settings, the hh-rlhf sample's path, and the Markdown table printer."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # benchmarks never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rmsecrets.experiments import table as markdown_table   # noqa: E402  (after the offline settings)
from rmsecrets.data import hh_sample                  # noqa: E402

HH = hh_sample() or Path("shared/data/hh-rlhf/harmless-base-test.jsonl.gz")   # the sample, or where it would be


def table(rows: list[dict]) -> None:
    """Print dicts with the same keys as a Markdown table (floats to 3 significant digits)."""
    print(markdown_table(rows, floats=".3g"))
