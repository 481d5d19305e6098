"""The course's front matter: the learning path on the home page (nbs/index.ipynb) and in the README say the same."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- learning path.*?-->\n(.*?)<!-- /learning path -->", re.S)


def learning_path(text: str) -> str:
    found = BLOCK.findall(text)
    assert len(found) == 1, "one learning-path block expected"
    return found[0]


def test_readme_and_home_page_give_the_same_learning_path():
    home = "\n".join("".join(c["source"]) for c in json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"]
                     if c["cell_type"] == "markdown")
    assert learning_path((ROOT / "README.md").read_text()) == learning_path(home)


def test_the_path_lists_every_lesson_once():
    lessons = sorted(p.stem for p in (ROOT / "nbs").glob("[0-9]*.ipynb"))
    rows = re.findall(r"^\| `(\w+)` \|", learning_path((ROOT / "README.md").read_text()), re.M)
    assert sorted(rows) == lessons and len(rows) == len(set(rows))
