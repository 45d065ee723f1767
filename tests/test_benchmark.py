"""The benchmark runs from a clean clone and writes its JSON (a smoke test: no timing is asserted)."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves this file out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_runs_and_records_the_machine(toy_root, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "benchmark.py", "--only", "decode", "data", "matching", "--repeats", "1",
                             "--data", toy_root, "--json", str(out), "--matching-batch", "2", "10"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert {"platform", "torch", "device", "cpu_count"} <= set(report["machine"])
    sections = {r["section"] for r in report["results"]}
    assert sections == {"decode", "data", "matching"}
    decode = [r for r in report["results"] if r["section"] == "decode"]
    trained = next(r for r in decode if r["profile"] == "trained-model")
    assert trained["candidates_per_image"] > 1000 and trained["fastest"] in {"greedy", "torchvision-loop",
                                                                              "torchvision-batched"}
    assert decode[-1]["speedup"] > 0
