"""What a reviewer pastes into a pull request: params and metrics against a revision, the plots
that changed as images, and the best trial of each search study.

    python -m fashion_mnist_mlp.tools.report [--rev main] [--out report.md]    # make report [REV=main]

The workspace is compared with `--rev` through DVC itself (`dvc params diff --md`, `dvc metrics
diff --md`, `dvc plots diff --json`); charts are drawn to PNG by vl-convert (fashion_mnist_mlp/tools/plots.py)
and written with the images beside the report, in report/ (both git-ignored).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.tools.plots import chart_png
from fashion_mnist_mlp.training.files import atomic_dir, atomic_path

REPORT = Path("report.md")
STUDY = Path("search/study.db")
WORKSPACE = "workspace"  # DVC's name for the working tree's revision


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fashion_mnist_mlp.tools.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--rev", default="main", help="the revision to compare with (default: main)"
    )
    parser.add_argument("--out", type=Path, default=REPORT, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.out.suffix != ".md":
        raise StageError(f"--out {args.out}: give a markdown file name (report.md)")
    images = args.out.with_suffix("")  # report.md -> report/
    refuse_foreign_files(images)
    with atomic_dir(images) as staging, atomic_path(args.out) as text:
        (staging / MARK).touch()
        sections = [
            f"# {WORKSPACE} vs {args.rev}",
            "## Params\n\n" + table(dvc("params", "diff", args.rev, "--md"), "No param changed."),
            "## Metrics\n\n"
            + table(dvc("metrics", "diff", args.rev, "--md"), "No metric changed."),
            "## Plots that changed\n\n" + changed_plots(args.rev, staging, images.name),
        ]
        if STUDY.exists():
            sections.append("## Search\n\n" + search_summary(staging, images.name))
        text.write_text("\n\n".join(s.rstrip() for s in sections) + "\n")
    print(f"wrote {args.out} and {images}/")


MARK = ".made-by-make-report"  # in the images folder: the report may replace it


def refuse_foreign_files(images: Path) -> None:
    """The report replaces its images folder whole: never a folder it did not write."""
    if images.exists() and not (images / MARK).exists() and any(images.iterdir()):
        raise StageError(
            f"{images}/ exists and was not written by a report: the report replaces that "
            "folder whole; move it, or write the report elsewhere (--out other.md)"
        )


def dvc(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise StageError(f"dvc {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def table(markdown: str, empty: str) -> str:
    """DVC's markdown table, or `empty` for one with no rows (a header and its rule)."""
    return markdown if len(markdown.splitlines()) > 2 else empty


def changed_plots(rev: str, images: Path, link: str) -> str:
    """Each plot whose data or image differs between `rev` and the workspace, as images."""
    with tempfile.TemporaryDirectory() as tmp:
        plots = json.loads(dvc("plots", "diff", rev, "--json", "-o", tmp))["data"]
        lines, unchanged = [], []
        for name, renders in plots.items():
            if renders[0]["type"] == "image":
                urls = {r["revisions"][0]: Path(r["url"]) for r in renders}
                if len(urls) == 2 and len({p.read_bytes() for p in urls.values()}) == 1:
                    unchanged.append(name)
                    continue
                for revision, path in urls.items():
                    target = images / f"{slug(name)}-{slug(revision)}.png"
                    shutil.copy(path, target)
                    lines.append(f"### {name} ({revision})\n\n![{name}]({link}/{target.name})\n")
                continue
            spec = renders[0]["content"]
            if not data_differs(spec["data"]["values"]):
                unchanged.append(name)
                continue
            target = images / f"{slug(name)}.png"
            target.write_bytes(chart_png(spec))
            lines.append(f"### {name}\n\n![{name}]({link}/{target.name})\n")
    if unchanged:
        lines.append("Unchanged: " + ", ".join(unchanged) + ".")
    return "\n".join(lines) or "No plots."


def data_differs(rows: list[dict[str, Any]]) -> bool:
    """Whether the revisions' rows of one chart differ (DVC tags each row with its `rev`)."""
    by_rev: dict[str, list[str]] = {}
    for row in rows:
        point = {k: v for k, v in row.items() if k != "rev"}
        by_rev.setdefault(row["rev"], []).append(json.dumps(point, sort_keys=True))
    return len(by_rev) != 2 or len({tuple(sorted(v)) for v in by_rev.values()}) != 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def search_summary(images: Path, link: str) -> str:
    import optuna

    from fashion_mnist_mlp.tools.study_summary import summary, write_plots
    from fashion_mnist_mlp.tools.trials import connect

    storage = connect(f"sqlite:///{STUDY.resolve()}")
    parts = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        heading, *best = summary(study)
        parts.append(f"### {heading}\n")
        parts.extend(f"{line}\n" for line in best)
        folder = slug(f"study-{name}")
        for path in write_plots(study, images / folder):
            parts.append(f"![{path.stem}]({link}/{folder}/{path.name})\n")
    return "\n".join(parts) or f"{STUDY} holds no study."


if __name__ == "__main__":
    run_stage(main)
