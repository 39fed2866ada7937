"""The tools people run beside the pipeline: search, report, exps, predict, lesson, plots."""
