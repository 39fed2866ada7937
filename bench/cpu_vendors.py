"""The bytes of a small pipeline run on other CPU models: this machine's CPU, and QEMU's user-mode
emulation of an Intel Haswell and an AMD EPYC Rome (both AVX2 + FMA, no AVX-512), under
numerics.cpu = portable and = native.

    apt-get install qemu-user
    uv run python bench/cpu_vendors.py [--subset 3000] [--epochs 2] [--modes portable native]

MKL picks its code path by the CPU's vendor and model (CPUID), ATen by its instruction sets; QEMU
answers CPUID as the emulated CPU does, so both take the path they would take there, and QEMU
executes every exact instruction (add, multiply, FMA, sqrt, division) with IEEE rounding, as
the real CPU does. What it cannot stand in for are the approximate instructions (RCPPS,
RSQRTPS), whose bits each CPU model chooses; the portable path avoids the code that uses them
(stages/numerics.py). download and split (integer work) run once, natively; then train, swa,
evaluate and export run under each CPU, and the table shows the sha256 of every file they wrote.
Emulation is 10-20x slower than the real CPU: the default run takes about 15 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
QEMU = "qemu-x86_64"
CPUS = {"this CPU": None, "Intel Haswell (QEMU)": "Haswell-v4", "AMD EPYC Rome (QEMU)": "EPYC-Rome"}
STAGES = ["train", "swa", "evaluate", "export"]
OUTPUTS = ["models", "metrics"]


def small_project(path: Path, subset: int, epochs: int) -> None:
    shutil.copytree(ROOT / "stages", path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"].update(subset=subset, val_size=subset // 6)
    params["train"].update(epochs=epochs, batch_size=128)
    params["swa"].update(epochs=epochs, anneal_epochs=1)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "split"):
        subprocess.run([PYTHON, "-m", f"stages.{stage}"], cwd=path, check=True, capture_output=True)


def set_mode(path: Path, mode: str) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["numerics"]["cpu"] = mode
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stages(path: Path, qemu_cpu: str | None) -> dict[str, str]:
    """sha256 of every file the four stages wrote, run on `qemu_cpu` (None: this CPU)."""
    for name in OUTPUTS:
        shutil.rmtree(path / name, ignore_errors=True)
    prefix = [QEMU, "-cpu", qemu_cpu] if qemu_cpu else []
    for stage in STAGES:
        result = subprocess.run(
            [*prefix, str(PYTHON), "-m", f"stages.{stage}"], cwd=path, capture_output=True, text=True
        )
        if result.returncode != 0:
            sys.exit(f"{stage} on {qemu_cpu or 'this CPU'} failed:\n{result.stdout}{result.stderr}")
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()[:12]
        for name in OUTPUTS
        for file in sorted((path / name).rglob("*"))
        if file.is_file() and "resources" not in file.parts  # wall-clock figures
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["portable", "native"])
    args = parser.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} not found: apt-get install qemu-user")
    with tempfile.TemporaryDirectory(prefix="cpu-vendors-") as tmp:
        path = Path(tmp)
        small_project(path, args.subset, args.epochs)
        for mode in args.modes:
            set_mode(path, mode)
            hashes, seconds = {}, {}
            for label, cpu in CPUS.items():
                start = time.perf_counter()
                hashes[label] = run_stages(path, cpu)
                seconds[label] = time.perf_counter() - start
            report(mode, hashes, seconds)


def report(mode: str, hashes: dict[str, dict[str, str]], seconds: dict[str, float]) -> None:
    labels = list(hashes)
    print(f"\nnumerics.cpu = {mode}: sha256 (12 digits) of each output")
    print("| output | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    files = sorted(set().union(*hashes.values()))
    for file in files:
        row = [hashes[label].get(file, "missing") for label in labels]
        mark = "" if len(set(row)) == 1 else " **differs**"
        print(f"| {file}{mark} | " + " | ".join(row) + " |")
    same = sum(len({hashes[label].get(f) for label in labels}) == 1 for f in files)
    print(f"{same} of {len(files)} outputs identical on all {len(labels)} CPUs; "
          "seconds: " + ", ".join(f"{label} {s:.0f}" for label, s in seconds.items()))  # fmt: skip


if __name__ == "__main__":
    main()
