"""The pipeline's stages, one module each: `python -m fashion_mnist_mlp.stages.<name>` (dvc.yaml)."""
