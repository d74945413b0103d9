"""The commands the READMEs give are the commands the tests start.

Each step's README says `make stepNN`; conftest.SERVERS says how the tests start that
server. `make -n` prints the Makefile's command line without running it: both must match.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, SERVERS, load_module

PORT = "4321"  # any number: nothing is started
# Server name in conftest -> make target whose last command starts it.
TARGETS = {
    "step02-minimal": "step02-minimal",
    "step02": "step02",
    "step02-gunicorn": "step02-gunicorn",
    "step02-simple": "step02-simple",
    "step03-minimal": "step03-minimal",
    "step03": "step03",
}


def normalized(words):
    """A command with its environment assignments dropped and programs named without a path."""
    words = [word for word in words if not word.startswith(("HOST=", "PORT="))]
    names = [Path(word).name if word.startswith("/") else word for word in words]
    # python3 and python3.11 in a virtual environment are its python.
    return [re.sub(r"^python[\d.]*$", "python", name) for name in names]


def made_command(target):
    """The folder and the command line `make TARGET` runs to start its server."""
    printed = subprocess.run(
        ["make", "-n", "--no-print-directory", target, f"PORT={PORT}", "HOST=127.0.0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.replace("\\\n", " ")
    line = next(line for line in printed.splitlines() if line.startswith("cd step"))
    folder, command = line.removeprefix("cd ").split(" && ", 1)
    return folder, normalized(shlex.split(command))


@pytest.mark.parametrize("name", TARGETS)
def test_the_make_target_starts_what_the_tests_start(name):
    folder, command = SERVERS[name]
    tested = normalized([word.format(port=PORT) for word in command])
    assert made_command(TARGETS[name]) == (folder, tested)


def test_make_step06_starts_stack_py_which_starts_what_the_tests_start():
    # `make step06` runs stack.py, which starts each app process as the tests start one.
    assert made_command("step06") == ("step06_production", [
        "python", "stack.py", "--port", "8443", "--http-port", "8080",
        "--app-ports", PORT, "8001", "--redis-port", "6380"])
    stack = load_module("step06_stack", "step06_production/stack.py")
    folder, command = SERVERS["step06"]
    assert folder == "step06_production"
    assert normalized(stack.app_command(PORT)) == normalized(
        [word.format(port=PORT) for word in command])


def systemd_unit():
    """docs/deployment.md's unit file: {key: [values]} of its lines."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```ini\n# /etc/systemd/system/chat@\.service\n(.*?)```", text, re.S)
    assert block, "no chat@.service block in docs/deployment.md"
    unit = {}
    for line in block.group(1).splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            unit.setdefault(key, []).append(value)
    return unit


def test_the_systemd_unit_starts_what_the_tests_start():
    unit = systemd_unit()
    [directory], [command] = unit["WorkingDirectory"], unit["ExecStart"]
    folder, tested = SERVERS["step06"]
    assert Path(directory).name == folder
    started = [word.replace("%i", PORT) for word in shlex.split(command)]
    assert normalized(started) == normalized([word.format(port=PORT) for word in tested])


def test_the_systemd_unit_sets_only_what_step06_reads():
    # A misspelt name would be ignored without a word: each must be one the app reads.
    code = "".join(path.read_text() for path in (ROOT / "step06_production").glob("*.py"))
    read = set(re.findall(r"environ(?:\.get\(|\[)\"([A-Z_]+)\"", code))
    names = {setting.split("=", 1)[0] for setting in systemd_unit()["Environment"]}
    assert names and names <= read, names - read
