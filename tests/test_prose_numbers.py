"""No hand-typed number that can drift: every decimal number in a lesson's prose, or in the README, is one that the
lesson's outputs (or code), or a stored result file, contain — or it is a marked quote of the paper.

What counts as prose: the Markdown cells of a lesson outside its "Exercises" and "Notes" sections, and the README
outside code blocks. Left out of it: code spans, math, links, section numbers (§2.4), quotes of the paper — text in
curly quotation marks, “like this” — and the ledger's block, which `rmsecrets ledger write` renders from the stored
results (tests/test_ledger.py checks it is current). A prose number matches a source number when the source,
rounded to the prose's decimals, gives it: the text may say 0.62 for an output of 0.6213, or 29.5% for 0.2951."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb"))
RESULTS = [*sorted((ROOT / "benchmarks" / "results").glob("*")), *sorted((ROOT / "nbs" / "ledger").glob("*.json"))]
NUMBER = re.compile(r"(?<![\w.,])[-+−]?(\d+\.\d+)(%?)")
NOT_PROSE = re.compile(r"<!-- ledger:.*?<!-- ledger end -->|```.*?```|\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`|\]\([^)]*\)"
                       r"|https?://\S+|<[^>]*>|§[\d.–-]+|arXiv \S+|“[^”]*”|\d+(?:\.\d+){2,}", re.DOTALL)   # … and versions, addresses
SKIPPED = re.compile(r"^#{1,3}\s+(Exercises|Notes)\b")


def cell_outputs(cell: dict) -> str:
    parts = ["".join(cell["source"])]
    for o in cell.get("outputs", []):
        if "text" in o: parts.append("".join(o["text"]))
        parts += ["".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def numbers(text: str) -> set[float]:
    return {float(m.group(1)) for m in NUMBER.finditer(text)}


def prose_numbers(text: str) -> list[tuple[str, str]]:
    """(the number as written, its context) for every decimal number of `text` outside what is not prose."""
    text = NOT_PROSE.sub(" ", text)
    return [(m.group(0), text[max(0, m.start() - 60):m.end() + 20].replace("\n", " ")) for m in NUMBER.finditer(text)]


def found(written: str, sources: set[float]) -> bool:
    m = NUMBER.fullmatch(written.lstrip("+-−")) or NUMBER.fullmatch(written)
    value, digits = float(m.group(1)), len(m.group(1).split(".")[1])
    ways = [(value, digits)] + ([(value / 100, digits + 2)] if m.group(2) else [])   # 29.5% is 29.5 or 0.295
    return any(round(s, d) == round(v, d) for v, d in ways for s in sources)


def lesson_prose(nb: dict) -> list[str]:
    """The lesson's Markdown cells outside the Exercises and Notes sections."""
    out, skip = [], False
    for c in nb["cells"]:
        if c["cell_type"] != "markdown": continue
        text = "".join(c["source"])
        heading = re.match(r"^(#{1,3})\s", text)
        if heading: skip = bool(SKIPPED.match(text))
        if not skip: out.append(text)
    return out


def stale_numbers(nb: dict, extra: set[float] = frozenset()) -> list[tuple[str, str]]:
    sources = set(extra).union(*(numbers(cell_outputs(c)) for c in nb["cells"] if c["cell_type"] == "code"))
    return [(w, ctx) for text in lesson_prose(nb) for w, ctx in prose_numbers(text) if not found(w, sources)]


RESULT_NUMBERS = set().union(*(numbers(p.read_text()) for p in RESULTS))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_number_in_a_lesson_s_prose_is_in_its_outputs(path):
    bad = stale_numbers(json.loads(path.read_text()), RESULT_NUMBERS)
    assert not bad, f"{path.name}: numbers in the prose that no output or result file contains: " + \
        "; ".join(f"{w} in “…{ctx}…”" for w, ctx in bad)


def test_every_number_in_the_readme_is_in_a_lesson_or_a_result_file():
    sources = RESULT_NUMBERS.union(*(numbers(cell_outputs(c)) for p in LESSONS
                                     for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"))
    bad = [(w, ctx) for w, ctx in prose_numbers((ROOT / "README.md").read_text()) if not found(w, sources)]
    assert not bad, "README.md: numbers that no lesson output or result file contains: " + \
        "; ".join(f"{w} in “…{ctx}…”" for w, ctx in bad)


def test_a_planted_stale_number_fails():
    """The check can fail: a lesson that states a number its outputs do not show is caught; a quote is not."""
    nb = {"cells": [{"cell_type": "code", "source": ["print(0.7481)"], "outputs": [{"text": ["0.7481\n"]}]},
                    {"cell_type": "markdown", "source": ["The model reaches 0.748 against the truth."]}]}
    assert stale_numbers(nb) == []
    nb["cells"][1]["source"] = ["The model reaches 0.742 against the truth."]
    assert [w for w, _ in stale_numbers(nb)] == ["0.742"]
    nb["cells"][1]["source"] = ["The paper: “0.742 against the truth”."]
    assert stale_numbers(nb) == []
    nb["cells"].append({"cell_type": "markdown", "source": ["## Exercises\n\n1. Why 0.999?"]})
    assert stale_numbers(nb) == []
