"""The pipeline's stages (`python -m stages.<name>`) and the shared modules they import."""
