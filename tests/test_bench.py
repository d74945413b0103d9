"""`make bench` still runs: bench/run.py --quick against every server (no timing is checked)."""

import subprocess
import sys

import pytest

from conftest import ROOT

BENCH_SERVERS = ["step02", "step02-gunicorn", "step02-simple", "step03", "step03-asyncio",
                 "step03-deflate", "falcon-asgi", "bare-asgi", "websockets"]
QUICK_TIMEOUT = 150  # seconds; the quick run takes about 40 on a busy 2-core machine


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the quick benchmark once for this module; return its output and chart path."""
    chart = tmp_path_factory.mktemp("bench") / "bench.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--plot", str(chart)],
        cwd=ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, chart


@pytest.mark.timeout(QUICK_TIMEOUT + 10)
def test_quick_bench_prints_a_full_row_for_every_server(quick_run):
    output, _ = quick_run
    rows = {line.split("|")[1].strip(): line for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| server")}
    assert sorted(rows) == sorted(BENCH_SERVERS), output
    # "failed" marks a workload that did not complete against that server.
    failed = [name for name, row in rows.items() if "failed" in row or " - " in row]
    assert not failed, output


@pytest.mark.timeout(QUICK_TIMEOUT + 10)
def test_quick_bench_draws_the_chart(quick_run):
    _, chart = quick_run
    assert chart.read_bytes().startswith(b"\x89PNG"), "not a PNG"
