"""The README and the pages under docs/ link to each other by relative paths and #anchors: a page
moved or a heading renamed breaks a link here, not in a reader's hands. The files, modules and
names they tell a reader to open, run or import exist. And the README stays a first screen and a
tour (at most 300 lines); the rest lives in the pages it links."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

import pytest

from .conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).*?\1")
INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
# a path of this repository (not part of a URL's), optionally with a test: file.py::test_name
NAMED_FILE = re.compile(
    r"(?<![\w/.-])((?:fashion_mnist_mlp|stages|tests|bench|docs|search)/"
    r"[\w./-]*\w\.(?:py|md|png|json|yaml))(?:::(\w+))?"
)
DOTTED = re.compile(r"(?<![\w/.])fashion_mnist_mlp(?:\.\w+)+")  # a module, or a module's name
IMPORTED = re.compile(r"^from (fashion_mnist_mlp[\w.]*) import (\w+)", re.MULTILINE)


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks: a `# comment` in a bash
    block is no heading, a `[x](y)` in a Python block no link."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans and links as their text),
    lower case, without punctuation but hyphens and underscores, spaces as hyphens."""
    text = INLINE_LINK.sub(r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(page.read_text()):
        if match := HEADING.match(line):
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image in the page's prose."""
    return [
        (number, target)
        for number, line in prose(page.read_text())
        for target in LINK.findall(CODE_SPAN.sub("", line))
    ]


def broken(page: Path) -> list[str]:
    """The page's relative links that reach no file, or a page without that heading."""
    problems = []
    for number, target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        reached = (page.parent / path).resolve() if path else page
        where = f"{os.path.relpath(page, ROOT)}:{number}: {target}"
        if not reached.exists():
            problems.append(f"{where}: no file {reached}")
        elif anchor and reached.suffix == ".md" and anchor not in anchors(reached):
            problems.append(f"{where}: no heading of {reached.name} has the anchor #{anchor}")
    return problems


def resolves(dotted: str) -> bool:
    """Whether `a.b.c` is a module of this project, or the name `c` of its module `a.b`."""
    if importlib.util.find_spec(dotted.rsplit(".", 1)[0]) is None:
        return False
    try:
        if importlib.util.find_spec(dotted) is not None:
            return True
    except ModuleNotFoundError:  # the parent is a module, not a package
        pass
    module, name = dotted.rsplit(".", 1)
    return hasattr(importlib.import_module(module), name)


def missing_names(page: Path) -> list[str]:
    """The files, tests, modules and imported names the page mentions that do not exist."""
    text, where = page.read_text(), os.path.relpath(page, ROOT)
    problems = [
        f"{where}: {path}" + (f"::{test}" if test else "")
        for path, test in NAMED_FILE.findall(text)
        if not (ROOT / path).is_file() or (test and f"def {test}(" not in (ROOT / path).read_text())
    ]
    dotted = set(DOTTED.findall(text)) | {f"{m}.{n}" for m, n in IMPORTED.findall(text)}
    return problems + [f"{where}: {name}" for name in sorted(dotted) if not resolves(name)]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("More processes, more GPUs: torchrun", "more-processes-more-gpus-torchrun"),
        ("The lesson's setup as an experiment", "the-lessons-setup-as-an-experiment"),
        ("The same bytes on other CPUs: `numerics`", "the-same-bytes-on-other-cpus-numerics"),
        ("Serving: PyTorch vs ONNX Runtime", "serving-pytorch-vs-onnx-runtime"),
        ("See [the toolbox](toolbox.md) and early_stopping", "see-the-toolbox-and-early_stopping"),
        ("Two  spaces — a dash", "two--spaces--a-dash"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_repeated_heading_gets_a_number(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Setup\n\n## Setup\n\n```bash\n# not a heading\n```\n\n## Setup\n")
    assert anchors(page) == {"setup", "setup-1", "setup-2"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#a-section), [fine](#page), [web](https://example.org/x#y),\n"
        "[gone](missing.md), [no heading](other.md#b-section), ![no image](figure.png),\n"
        "`[code](not-a-link.md)`\n\n```markdown\n[code block](not-a-link.md)\n```\n"
    )
    assert [problem.split(": ", 2)[1] for problem in broken(page)] == [
        "missing.md",
        "other.md#b-section",
        "figure.png",
    ]


def test_every_relative_link_reaches_a_file_and_a_heading() -> None:
    problems = [problem for page in PAGES for problem in broken(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_a_stale_name_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    there = [
        "`fashion_mnist_mlp/config/params.py`, https://pytorch.org/docs/stable/notes/x.md",
        "`python -m fashion_mnist_mlp.tools.predict`",
        "tests/test_docs.py::test_a_stale_name_is_found",
        "```python\nfrom fashion_mnist_mlp.training.checkpoints import load_checkpoint\n```",
    ]
    gone = [
        "`stages/params.py`, fashion_mnist_mlp/stages/params.py, tests/test_docs.py::test_x",
        "python -m fashion_mnist_mlp.tools.ablation",
        "fashion_mnist_mlp.training.registry.load_model",
        "```python\nfrom fashion_mnist_mlp.training.checkpoints import load_model\n```",
    ]
    page.write_text("\n\n".join(there + gone) + "\n")
    assert [problem.split(": ", 1)[1] for problem in missing_names(page)] == [
        "stages/params.py",  # the package's old name
        "fashion_mnist_mlp/stages/params.py",
        "tests/test_docs.py::test_x",
        "fashion_mnist_mlp.tools.ablation",
        "fashion_mnist_mlp.training.checkpoints.load_model",
        "fashion_mnist_mlp.training.registry.load_model",
    ]


def test_every_file_module_and_name_the_docs_mention_exists() -> None:
    problems = [problem for page in PAGES for problem in missing_names(page)]
    assert not problems, "the docs name what is not there:\n" + "\n".join(problems)


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(README)}
    orphans = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_readme_is_a_first_screen_and_a_tour() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines: at most {MAX_README_LINES}; move detail to docs/"
    )
