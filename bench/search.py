"""A hyperparameter search around today's default on full data: does it beat the default?

    uv run python bench/search.py [--trials 20] [--workers 1]

Runs `python -m fashion_mnist_mlp.tools.search` with search/space.yaml in a fresh clone of HEAD (the workspace
and its experiments are not touched), then sets the best trial's validation accuracy (the
objective) and test accuracy beside the default's (HEAD's dvc.lock, the same full data and
split). Test scores are read only here, after the search chose. The study's plots go to
search/bench/. About 2.5 minutes a trial here with one worker; the pruner stops some early.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dvc.api

from bench._experiments import fresh_clone
from bench.pipeline import ENV, ROOT
from fashion_mnist_mlp.config.paths import TEST_METRICS_KEYS

PLOTS = ROOT / "search" / "bench"


def scores(repo: Path, rev: str) -> tuple[float, float]:
    """Validation and test accuracy of the model the pipeline exported at `rev`."""
    calibration = json.loads(dvc.api.read("metrics/calibration.json", repo=str(repo), rev=rev))
    test = json.loads(dvc.api.read("metrics/test.json", repo=str(repo), rev=rev))
    exported = json.loads(dvc.api.read("models/export/model_card.json", repo=str(repo), rev=rev))
    model = TEST_METRICS_KEYS[exported["source_model"]]
    return calibration["validation"]["accuracy"], test[model]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    default_val, default_test = scores(ROOT, "HEAD")
    with fresh_clone("search-bench-") as repo:
        start = time.perf_counter()
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fashion_mnist_mlp.tools.search",
                    "--trials",
                    str(args.trials),
                    "--study",
                    "bench",
                    "--worker",
                    str(w),
                ],
                cwd=repo,
                env=ENV,
            )
            for w in range(args.workers)
        ]
        if [w.wait() for w in workers].count(0) != len(workers):  # wait for all before cleanup
            sys.exit("a search worker failed")
        minutes = (time.perf_counter() - start) / 60
        import optuna

        study = optuna.load_study(
            study_name="bench", storage=f"sqlite:///{repo / 'search' / 'study.db'}"
        )
        best = study.best_trial
        best_val, best_test = scores(repo, best.user_attrs["experiment"])
        subprocess.run(
            [sys.executable, "-m", "fashion_mnist_mlp.tools.search", "--study", "bench",
             "--storage", f"sqlite:///{repo / 'search' / 'study.db'}", "--plots", str(PLOTS)],
            cwd=repo, env=ENV, check=True,
        )  # fmt: skip

    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    print(f"\n{len(study.trials)} trials ({counts}) in {minutes:.1f} min, {args.workers} worker(s)")
    print(f"{'':<22}{'val acc':>9}{'test acc':>10}")
    print(f"{'default (HEAD)':<22}{default_val:>9.4f}{default_test:>10.4f}")
    print(f"{'best trial ' + str(best.number):<22}{best_val:>9.4f}{best_test:>10.4f}")
    for key, value in best.params.items():
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    print(f"reaches 0.91 test accuracy: {'yes' if best_test >= 0.91 else 'no'}; plots in {PLOTS}")


if __name__ == "__main__":
    main()
