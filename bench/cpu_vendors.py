"""The bytes of a small pipeline run on other CPU models: this machine's CPU, and QEMU's user-mode
emulation of an Intel Haswell and an AMD EPYC Rome (both AVX2 + FMA, no AVX-512), under
numerics.cpu = portable and = native.

    apt-get install qemu-user
    uv run python bench/cpu_vendors.py [--modes portable native]

MKL picks its code path by the CPU's vendor and model (CPUID), ATen by its instruction sets; QEMU
answers CPUID as the emulated CPU does, so both take the path they would take there, and QEMU
executes every exact instruction (add, multiply, FMA, sqrt, division) with IEEE rounding, as
the real CPU does. What it cannot stand in for are the approximate instructions (RCPPS,
RSQRTPS), whose bits each CPU model chooses; the portable path avoids the code that uses them
(fashion_mnist_mlp/training/numerics.py). The run is the end-to-end tests' small one (tests/e2e/conftest.py SMALL:
3,000 images, 2 + 2 epochs, one thread): download and split (integer work) run once, natively;
then train, swa, evaluate and export run under each CPU. The table shows the md5 of every file
they wrote, and which of them tests/e2e/reference_hashes.json records (a file's md5, as
dvc.lock has it). Emulation is 10-20x slower than the real CPU: the run takes about 15 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stages import PYTHON, ROOT, set_numerics_cpu, stage_project
from tests.e2e.conftest import SMALL, merged

REFERENCE = ROOT / "tests" / "e2e" / "reference_hashes.json"
QEMU = "qemu-x86_64"
CPUS = {"this CPU": None, "Intel Haswell (QEMU)": "Haswell-v4", "AMD EPYC Rome (QEMU)": "EPYC-Rome"}
STAGES = ["train", "swa", "evaluate", "export"]
OUTPUTS = ["models", "metrics"]


def run_stages(path: Path, qemu_cpu: str | None) -> dict[str, str]:
    """sha256 of every file the four stages wrote, run on `qemu_cpu` (None: this CPU)."""
    for name in OUTPUTS:
        shutil.rmtree(path / name, ignore_errors=True)
    prefix = [QEMU, "-cpu", qemu_cpu] if qemu_cpu else []
    for stage in STAGES:
        result = subprocess.run(
            [*prefix, str(PYTHON), "-m", f"fashion_mnist_mlp.stages.{stage}"],
            cwd=path,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.exit(f"{stage} on {qemu_cpu or 'this CPU'} failed:\n{result.stdout}{result.stderr}")
    return {
        str(file.relative_to(path)): hashlib.md5(file.read_bytes()).hexdigest()
        for name in OUTPUTS
        for file in sorted((path / name).rglob("*"))
        if file.is_file() and "resources" not in file.parts  # wall-clock figures
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["portable", "native"])
    args = parser.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} not found: apt-get install qemu-user")
    with tempfile.TemporaryDirectory(prefix="cpu-vendors-") as tmp:
        path = Path(tmp)
        stage_project(path, merged(yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL))
        for mode in args.modes:
            set_numerics_cpu(path, mode)
            hashes, seconds = {}, {}
            for label, cpu in CPUS.items():
                start = time.perf_counter()
                hashes[label] = run_stages(path, cpu)
                seconds[label] = time.perf_counter() - start
            report(mode, hashes, seconds)


def report(mode: str, hashes: dict[str, dict[str, str]], seconds: dict[str, float]) -> None:
    labels = list(hashes)
    reference = json.loads(REFERENCE.read_text())["outs"]
    print(f"\nnumerics.cpu = {mode}: md5 (12 digits) of each output; ref: {REFERENCE.name}")
    print("| output | " + " | ".join(labels) + " | ref |")
    print("|---" * (len(labels) + 2) + "|")
    files = sorted(set().union(*hashes.values()))
    for file in files:
        row = [hashes[label].get(file, "missing") for label in labels]
        mark = "" if len(set(row)) == 1 else " **differs**"
        ref = {None: "", row[0]: "same"}.get(reference.get(file), "other")
        print(f"| {file}{mark} | " + " | ".join(h[:12] for h in row) + f" | {ref} |")
    same = sum(len({hashes[label].get(f) for label in labels}) == 1 for f in files)
    print(f"{same} of {len(files)} outputs identical on all {len(labels)} CPUs; "
          "seconds: " + ", ".join(f"{label} {s:.0f}" for label, s in seconds.items()))  # fmt: skip


if __name__ == "__main__":
    main()
