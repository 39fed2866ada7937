"""The FashionMNIST MLP pipeline: stages/ (dvc.yaml runs each as `python -m
fashion_mnist_mlp.stages.<name>`), training/ (the library), config/ (the params schema) and
tools/ (the commands beside the pipeline).

Its one public function, `load_model`: the exported model of any version, from any directory
(`make setup` installs the project into its .venv; another project installs it as a package):

    from fashion_mnist_mlp import load_model
    model = load_model(rev="fashion-mlp@v1.0.0")  # the repository of the current directory
    model = load_model(repo="https://github.com/<org>/<project>", rev="fashion-mlp@v1.1.0")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fashion_mnist_mlp.training.versions import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # lazily: the download and split stages import this package and must not pay for torch
    if name == "load_model":
        from fashion_mnist_mlp.training.versions import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
