"""benchmarks.gpu in its CPU mode: the prepared GPU check runs end to end before a GPU ever sees it."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains 8 small networks and starts 3 processes
def test_cpu_mode_checks_times_packs_and_estimates(tmp_path):
    out = tmp_path / "gpu-check.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert text in done.stdout
    checks = [line for line in text.splitlines() if line.startswith(("| ISNM", "| BN-pool", "| bf16"))]
    assert len(checks) == 4 and all(line.endswith("| pass |") for line in checks), checks
    speeds = re.findall(r"^\| (vgg_small|resnet18) \| ([15]) \| (fp32|bf16) \| ([0-9]+) \|", text, re.M)
    assert {(a, t, p) for a, t, p, _ in speeds} == {(a, t, p) for a in ("vgg_small", "resnet18") for t in "15"
                                                     for p in ("fp32", "bf16")}
    assert all(int(rate) > 0 for *_, rate in speeds)
    packing = re.findall(r"^\| ([124]) \| ([0-9]+) \| ([0-9]+) \|$", text, re.M)
    assert [k for k, _, _ in packing] == ["1", "2"] and all(int(total) > 0 for _, total, _ in packing)
    hours = float(re.search(r"\*\*([0-9.]+) device-hours\*\*", text).group(1))
    best = max(int(total) for _, total, _ in packing)
    assert hours == pytest.approx(12 * 200 * 50_000 / best / 3600, rel=0.05)  # from the rounded figures printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the CUDA mode is the real check, run by hand")
def test_cuda_mode_without_a_gpu_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cuda"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "sees no GPU" in done.stderr and done.stderr.count("\n") == 1
