"""The configuration: the params.yaml schema and the option tables (losses, optimizers, schedulers)."""
