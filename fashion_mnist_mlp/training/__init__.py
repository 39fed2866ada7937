"""The training library the stages share: data, model, loop, checkpoints, processes, numerics."""
