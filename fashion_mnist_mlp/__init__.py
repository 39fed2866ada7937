"""The pipeline's stages (`python -m stages.<name>`) and the shared modules they import.

Installed in another project (pyproject.toml), this package is `fashion_mnist_mlp`:

    from fashion_mnist_mlp import load_model
    model = load_model(repo="https://github.com/<org>/<project>", rev="fashion-mlp@v1.1.0")
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # lazily: the download and split stages import this package and must not pay for torch
    if name == "load_model":
        from fashion_mnist_mlp.training.versions import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
