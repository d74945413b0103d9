"""The soak (tools/soak.py), short: 200 chat clients on step03 for half a minute.

Senders, readers that pause, clients that leave and come back: every message sent
to a client in the room arrives once and in order, or the server closed that client;
none is left open but deaf. Deselect it with -m "not soak"; `make soak` runs the long one.
"""

import subprocess
import sys

import pytest

from conftest import ROOT


def table_row(output, server):
    """The soak's table row for server, as {column: cell}."""
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("| server |"))
    row = next(line for line in lines if line.startswith(f"| {server} |"))
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    columns = [column.strip() for column in header.strip().strip("|").split("|")]
    return dict(zip(columns, cells, strict=True))


@pytest.mark.soak
@pytest.mark.timeout(180)
def test_quick_soak_on_step03():
    """Nothing lost, duplicated or deaf, and the server's memory back near its warm-up."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "soak.py"), "--quick", "--servers", "step03"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    row = table_row(result.stdout, "step03")
    assert int(row["messages sent"]) > 0, report
    assert int(row["delivered"]) > 0, report
    assert row["lost"] == "0", report
    assert row["duplicated"] == "0", report
    assert row["open-but-deaf"] == "0", report
