"""Build the course's website offline (`make docs`): MkDocs Material, the notebooks rendered by mkdocs-jupyter.

    python scripts/docs.py            # sources in _docs/src, the site in _docs/site
    python scripts/docs.py --serve    # ... then serve it on http://127.0.0.1:8000

The notebooks are rendered with the outputs committed in them (nothing is executed). Before MkDocs sees them,
each is copied with nbdev's `#|` directive lines stripped and its `#| hide` cells and directive-only cells
dropped. The API reference is written here from the package: every public name of every module with its
signature, docstring and the parameter comments nbdev calls docments (fastcore reads them, as `show_doc` does).
The benchmarks page is the README's Benchmarks section and the files in benchmarks/results. MathJax 3 comes from
the `sphinx-mathjax-offline` wheel (its files alone) and is copied into the site; Material's fonts are off. Nothing is fetched.
"""
import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "_docs"
SRC, SITE = OUT / "src", OUT / "site"
MATHJAX = "assets/mathjax"          # where MathJax lands in the site (pages are all at the top level)
# nbconvert's page template loads one script for the math: this one configures MathJax 3 as nbconvert configures
# MathJax 2 (its own configuration block is of a type MathJax 3 ignores) and loads the bundled copy beside it
MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
        processEscapes: true, processEnvironments: true, tags: "ams"},
  options: {ignoreHtmlClass: "tex2jax_ignore", processHtmlClass: "tex2jax_process"}
};
(function () {
  var s = document.createElement("script");
  s.src = document.currentScript.src.replace(/mathjax-config\\.js.*$/, "mathjax/tex-chtml-full.js");
  s.async = true;
  document.head.appendChild(s);
})();
"""


EXTRA_CSS = """/* nbdev_clean clears execution counts: the empty "In [ ]:" prompts only take room */
.jupyter-wrapper .jp-InputPrompt, .jupyter-wrapper .jp-OutputPrompt { display: none !important; }
.jupyter-wrapper .jp-Cell { padding-left: 0; }
"""


def lesson_order() -> list[str]:
    """The lessons in the order of the learning path's table (nbs/index.ipynb)."""
    text = "".join("".join(c["source"]) for c in json.loads((ROOT / "nbs/index.ipynb").read_text())["cells"])
    order = re.findall(r"^\| `(\w+)` \|", text, flags=re.M)
    missing = sorted({p.stem for p in (ROOT / "nbs").glob("*.ipynb")} - set(order) - {"index"})
    if missing: raise SystemExit(f"nbs/index.ipynb: the learning path does not list {', '.join(missing)}")
    return order


def strip_directives(nb: dict) -> dict:
    """The notebook as a reader should see it: no `#|` lines, no `#| hide` cells, no cells that were only directives."""
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            lines = "".join(c["source"]).splitlines(keepends=True)
            head = 0
            while head < len(lines) and (lines[head].strip().startswith("#|") or not lines[head].strip()):
                head += 1
            words = {w for line in lines[:head] for w in line.strip()[2:].replace(",", " ").split()}
            if "hide" in words or not "".join(lines[head:]).strip(): continue
            c = dict(c, source="".join(lines[head:]).rstrip("\n"))
        else:
            text = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)",         # the badge is an image from the
                          r'<a class="md-button" href="\1">Open in Colab</a>', "".join(c["source"]))  # internet: a link
            text = re.sub(r"\]\((\w+)\.ipynb(#[^)]*)?\)", r"](\1.html\2)", text)   # lesson links to lesson pages
            c = dict(c, source=text)
        cells.append(c)
    return dict(nb, cells=cells)


def title_of(nb: dict) -> str:
    first = "".join(nb["cells"][0]["source"])
    m = re.match(r"#\s+(.+)", first)
    return m.group(1).strip() if m else "Untitled"


def _anno(a) -> str:
    if a is inspect.Parameter.empty: return ""
    return a.__name__ if isinstance(a, type) else str(a).replace("typing.", "")


def _default(v) -> str:
    if v is inspect.Parameter.empty: return ""
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "…"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def api_page(module: str, lesson: str | None) -> str:
    """Markdown for one module: its docstring, then each public name with signature, docstring and parameters."""
    from fastcore.docments import docments
    mod = importlib.import_module(f"rmsecrets.{module}")
    out = [f"# rmsecrets.{module}\n", (mod.__doc__ or "").strip() + "\n",
           f"Taught in the lesson [{lesson}](../{lesson}.ipynb).\n" if lesson else ""]
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            out.append(f"## `{name}`\n\n```python\n{name} = {_default(obj)}\n```\n")
            continue
        try: sig = str(inspect.signature(obj))
        except (TypeError, ValueError): sig = "(…)"
        kind = "class" if inspect.isclass(obj) else "def"
        out.append(f"## `{name}`\n\n```python\n{kind} {name}{sig}\n```\n")
        doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or obj.__doc__) else ""
        if doc and not (inspect.isclass(obj) and doc.startswith(name + "(")): out.append(doc + "\n")
        try: params = docments(obj, full=True)
        except Exception: params = {}
        rows = [(p, d) for p, d in params.items() if p not in ("self", "return")]
        if rows:
            out.append("| parameter | type | default | |\n|---|---|---|---|")
            out += [f"| `{p}` | {_cell(_anno(d['anno']))} | {_cell(_default(d['default']))} | {_cell(d['docment'] or '')} |"
                    for p, d in rows]
            out.append("")
    return "\n".join(out)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.M | re.S)
    return m.group(1).strip() if m else ""


def write_sources() -> list:
    """Fill _docs/src with the pages; return MkDocs' nav."""
    if SRC.exists(): shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    lessons, order, lesson_of = [], lesson_order(), {}   # lesson_of: module -> the notebook that exports it
    for stem in ["index"] + order:
        nb = json.loads((ROOT / "nbs" / f"{stem}.ipynb").read_text())
        for c in nb["cells"]:
            m = re.match(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"]))
            if m: lesson_of[m.group(1)] = stem
        (SRC / f"{stem}.ipynb").write_text(json.dumps(strip_directives(nb), ensure_ascii=False))
        if stem != "index": lessons.append({f"{stem}: {title_of(nb)}": f"{stem}.ipynb"})
    (SRC / "api").mkdir()
    modules = sorted((p.stem for p in (ROOT / "rmsecrets").glob("*.py") if not p.stem.startswith("_")),
                     key=lambda m: (order.index(lesson_of[m]) if m in lesson_of else len(order), m))   # as the lessons build them
    for m in modules: (SRC / "api" / f"{m}.md").write_text(api_page(m, lesson_of.get(m)))
    (SRC / "api" / "index.md").write_text("# API reference\n\nOne page per module of the package, in the order "
        "the lessons build it. Each public function and class: its signature, its docstring, and a table of its "
        "parameters with the comments written beside them in the code.\n\n" +
        "\n".join(f"* [`rmsecrets.{m}`]({m}.md): {(importlib.import_module('rmsecrets.' + m).__doc__ or '').strip().splitlines()[0] if importlib.import_module('rmsecrets.' + m).__doc__ else ''}"
                  for m in modules) + "\n")
    bench = ["# Benchmarks\n", readme_section("Benchmarks"), "\n## The result files\n",
             "Each file in `benchmarks/results/` as its script wrote it; rerun with `python benchmarks/NAME.py`.\n"]
    for f in sorted((ROOT / "benchmarks/results").glob("*.txt")):
        bench.append(f"### `{f.name}`\n\n```text\n{f.read_text().rstrip()}\n```\n")
    (SRC / "benchmarks.md").write_text("\n".join(bench))
    from importlib.metadata import distribution                 # MathJax 3, from the sphinx-mathjax-offline wheel
    shutil.copytree(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"),
                    SRC / MATHJAX)
    (SRC / "assets" / "mathjax-config.js").write_text(MATHJAX_CONFIG)
    (SRC / "assets" / "extra.css").write_text(EXTRA_CSS)
    return [{"Home": "index.ipynb"}, {"Lessons": lessons}, {"API reference": ["api/index.md"] +
            [{f"rmsecrets.{m}": f"api/{m}.md"} for m in modules]}, {"Benchmarks": "benchmarks.md"}]


def build() -> Path:
    import yaml
    nav = write_sources()
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config.update(docs_dir=str(SRC), site_dir=str(SITE), nav=nav)
    config["plugins"] = [p if not (isinstance(p, dict) and "mkdocs-jupyter" in p) else
                         {"mkdocs-jupyter": dict(p["mkdocs-jupyter"], custom_mathjax_url="assets/mathjax-config.js")}
                         for p in config.get("plugins", [])]
    (OUT / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_MKDOCS_2_WARNING="1")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(OUT / "mkdocs.yml")],
                   check=True, env=env, cwd=OUT)   # mkdocs-jupyter caches in ./.cache
    external = sorted({m for f in SITE.rglob("*.html") for m in re.findall(r'(?:src|href)="(https?://[^"]+)"', f.read_text())
                       if not m.startswith(("https://arxiv.org", "https://github.com", "https://colab.research.google.com"))})
    if any(re.search(r"\.(js|css|woff2?)(\?|$)", u) for u in external):
        raise SystemExit("the site loads scripts or styles from the internet:\n" + "\n".join(external))
    notebooks = sorted({str(f.relative_to(SITE)) for f in SITE.rglob("*.html") if re.search(r'href="[\w./]+\.ipynb', f.read_text())})
    if notebooks: raise SystemExit(f"pages link to .ipynb files instead of lesson pages: {notebooks}")
    return SITE


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", action="store_true", help="serve the built site on 127.0.0.1:8000")
    a = ap.parse_args(argv)
    site = build()
    print(f"built {sum(1 for _ in site.rglob('*.html'))} pages in {site.relative_to(ROOT)}")
    if a.serve:
        subprocess.run([sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", str(site)])


if __name__ == "__main__":
    main()
