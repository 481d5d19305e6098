"""What every benchmark script shares: offline settings, the hh-rlhf sample's path, and the Markdown table printer."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # benchmarks never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def table(rows: list[dict]) -> None:
    """Print dicts with the same keys as a Markdown table (floats to 3 significant digits)."""
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows: print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
