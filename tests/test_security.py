"""No code path unpickles: checked on the source of every stage and benchmark, so a future
`torch.load` without weights_only=True, or a pickle import, fails here before it ships.
(tests/test_checkpoints.py and tests/test_stage_errors.py show a malicious pickle refused.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

SOURCES = sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "bench").glob("*.py")])
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_source_never_unpickles(source: Path) -> None:
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not UNPICKLING_MODULES & {n.split(".")[0] for n in names}, ast.unparse(node)
        if isinstance(node, ast.Call):
            name = call_name(node)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") or (name == "load" and "weights_only" in keywords):
                assert keywords.get("weights_only") == "True", ast.unparse(node)
            if name.endswith(("np.load", "numpy.load")):
                assert keywords.get("allow_pickle", "False") == "False", ast.unparse(node)


def test_the_check_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nstate = torch.load('model.pt')\n")
    with pytest.raises(AssertionError):
        test_source_never_unpickles(bad)
    bad.write_text("from pickle import loads\n")
    with pytest.raises(AssertionError):
        test_source_never_unpickles(bad)
    bad.write_text("import torch\nstate = torch.load('model.pt', weights_only=True)\n")
    test_source_never_unpickles(bad)
