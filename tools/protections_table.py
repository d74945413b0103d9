"""Write docs/protections.md: each behaviour x each server, first rungs and hardened steps.

Usage:
    python tools/protections_table.py OUTCOMES.json            # write docs/protections.md
    python tools/protections_table.py --check OUTCOMES.json    # exit 1 if it is stale

OUTCOMES.json is what `pytest --outcomes PATH` writes (tests/conftest.py). `make test`
writes it and runs --check; `make protections` runs the suites and writes the page.
Every row whose first rung fails must name the code that adds the protection.
"""

import argparse
import ast
import difflib
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "protections.md"
SUITES = ["test_contract.py", "test_bad_input.py", "test_faults.py"]
SERVERS = ["step02-minimal", "step02", "step02-gunicorn", "step02-simple",
           "step03-minimal", "step03", "step04-minimal", "step04", "step04-redis",
           "step05-minimal", "step05", "step06"]
HEADINGS = ["02 minimal", "02", "02 gunicorn", "02 simple-websocket", "03 minimal", "03",
            "04 minimal", "04", "04 Redis", "05 minimal", "05", "06"]
STEP02, STEP03, STEP04 = "step02_ws_gevent", "step03_ws_asgi", "step04_scale_out"
STEP05, STEP06 = "step05_resume", "step06_production"


def same(code):
    """The same places in every hardened step's folder."""
    return {STEP02: code, STEP03: code, STEP04: code, STEP05: code, STEP06: code}


def asgi(step02, step03, step04=None):
    """Places in step02, and in step03 (step04 to step06 the same unless given)."""
    return {STEP02: step02, STEP03: step03, STEP04: step04 or step03, STEP05: step04 or step03,
            STEP06: step04 or step03}


# The code that gives each behaviour, as "file:Class.method" or "file:/text on the line/".
ECHO_BOTH_TYPES = asgi(["app.py:WebSocketAPI.on_websocket"],
                       ["app.py:AsIs", "app.py:WebSocketAPI.on_websocket"])
SHUTDOWN_1001 = asgi(["wsgi.py:main", "protections.py:close_all", "protections.py:Worker"],
                     ["protections.py:Server", "protections.py:OpenWebSockets"])
ADDED_BY = {
    "test_echoes_binary": ECHO_BOTH_TYPES,
    "test_echoes_a_one_mebibyte_message": ECHO_BOTH_TYPES,
    "test_client_close_is_answered_with_1000": {STEP02: ["protections.py:WebSocket.close"]},
    "test_plain_get_answers_426_with_the_posts_text": same(["app.py:refuse_plain_get"]),
    "test_health_answers_ok": same(["app.py:HealthResource"]),
    "test_serves_the_client": same(["app.py:/add_static_route/"]),
    "test_chat_welcomes_a_client_with_its_id": same(["chat.py:Room.join"]),
    "test_chat_among_three_clients_with_a_leave": same(["chat.py:Room.join", "chat.py:Room.leave"]),
    "test_chat_keeps_each_senders_order": same(["chat.py:ChatClient.deliver"]),
    "test_chat_answers_an_empty_message_with_an_error": same(["chat.py:Room.say"]),
    "test_chat_closes_a_binary_message_with_1003": same(["chat.py:Room.chat"]),
    "test_refuses_a_foreign_origin_with_403": asgi(
        ["protections.py:origin_allowed", "protections.py:Handler.upgrade_websocket"],
        ["protections.py:origin_allowed", "protections.py:OriginCheck"]),
    "test_allowed_origins_replaces_the_default_origins": same(
        ["protections.py:/^ALLOWED_ORIGINS/"]),
    "test_echo_closes_a_message_over_16_mib_with_1009": asgi(
        ["protections.py:WebSocket.read_frame"], ["server.py:/ws_max_size/"]),
    "test_chat_closes_a_message_over_64_kib_with_1009": asgi(
        ["app.py:ChatResource.on_get", "protections.py:repaired"], ["chat.py:Room.chat"]),
    "test_chat_closing_a_client_that_is_already_gone_is_quiet": asgi(
        ["chat.py:Room.chat"], ["protections.py:WebSocketProtocol.send"]),
    "test_closes_a_1_gib_frame_header_with_1009_without_growing": asgi(
        ["protections.py:WebSocket.read_frame"], ["server.py:/ws_max_size/"]),
    "test_closes_invalid_utf8_text_with_1007": {STEP02: ["protections.py:WebSocket.receive"]},
    "test_chat_answers_a_text_over_2000_characters_with_an_error": same(["chat.py:Room.say"]),
    "test_chat_accepts_a_text_of_exactly_2000_characters": same(["chat.py:Room.say"]),
    "test_chat_answers_a_message_of_exactly_64_kib_with_an_error_not_a_close": same(
        ["chat.py:Room.say"]),
    "test_refuses_a_foreign_origin_on_chat_with_403": asgi(
        ["protections.py:Handler.upgrade_websocket"], ["protections.py:OriginCheck"]),
    "test_allowed_origins_takes_several_patterns_and_globs": same(
        ["protections.py:origin_allowed"]),
    "test_closes_a_protocol_error_with_1002": {
        STEP02: ["protections.py:WebSocket.read_frame", "protections.py:WebSocket.receive"]},
    "test_sigterm_closes_every_client_with_1001_and_exits_cleanly": SHUTDOWN_1001,
    "test_ctrl_c_stops_the_server_without_a_traceback": SHUTDOWN_1001,
    "test_shutdown_does_not_wait_for_a_client_that_stops_reading": asgi(
        ["protections.py:close_all"], ["protections.py:OpenWebSockets.close_all"]),
    "test_a_client_that_answers_pings_is_kept": {STEP02: ["protections.py:WebSocket.keep_alive"]},
    "test_a_client_that_stops_reading_does_not_stall_the_chat": asgi(
        ["chat.py:ChatClient.deliver", "chat.py:Room.broadcast"],
        ["chat.py:ChatClient.deliver", "chat.py:Room.broadcast"],
        ["chat.py:ChatClient.deliver", "chat.py:Room.deliver"]),
    "test_a_silent_peer_is_dropped_after_the_ping_timeout": asgi(
        ["protections.py:WebSocket.keep_alive"], ["server.py:/ws_ping_interval/"]),
    "test_churn_leaves_an_empty_room_and_bounded_memory": same(["chat.py:Room.leave"]),
    "test_a_dropped_chat_client_is_closed_when_it_reads_again": asgi(
        ["chat.py:ChatClient.drop", "protections.py:WebSocket.abort"],
        ["chat.py:ChatClient.drop", "chat.py:ChatClient.close_dropped"]),
    "test_a_dropped_chat_client_paused_past_the_ping_timeout_is_closed": asgi(
        ["chat.py:ChatClient.drop", "protections.py:WebSocket.keep_alive"],
        ["chat.py:ChatClient.close_dropped", "server.py:/ws_ping_interval/"]),
}


def find_lines(folder, spec):
    """First and last line of a symbol ("Class.method") or of the line matching /text/."""
    name, _, target = spec.partition(":")
    source = (ROOT / folder / name).read_text()
    if target.startswith("/"):
        pattern = re.compile(target.strip("/"))
        for number, line in enumerate(source.splitlines(), 1):
            if pattern.search(line):
                return number, number
        raise LookupError(f"{folder}/{name}: no line matches {target}")
    nodes = ast.parse(source).body
    for part in target.split("."):
        node = next((n for n in nodes if getattr(n, "name", None) == part), None)
        if node is None:
            raise LookupError(f"{folder}/{name}: no {target}")
        nodes = node.body
    return node.lineno, node.end_lineno


def link(folder, spec):
    """A markdown link to the lines of spec, relative to docs/."""
    name = spec.partition(":")[0]
    first, last = find_lines(folder, spec)
    lines = f"L{first}" if first == last else f"L{first}-L{last}"
    return f"[`{name}:{first}`](../{folder}/{name}#{lines})"


def added_by(test):
    """Where each hardened step adds the behaviour, one short entry per folder."""
    places = ADDED_BY.get(test, {})
    entries = []
    for folder, specs in places.items():
        short = folder.split("_")[0]
        entries.append(f"{short}: " + ", ".join(link(folder, spec) for spec in specs))
    return "<br>".join(entries)


def rows_from(outcomes):
    """Group the outcomes into rows: one per test and parameters, a cell per server."""
    rows = {}
    for outcome in outcomes:
        if outcome["file"] not in SUITES or outcome["server"] not in SERVERS:
            continue
        key = (outcome["file"], outcome["test"], outcome["params"])
        rows.setdefault(key, {})[outcome["server"]] = outcome
    order = {name: index for index, name in enumerate(SUITES)}
    return sorted(rows.items(), key=lambda item: order[item[0][0]])


CELLS = {"passed": "✓", "xfailed": "✗", "skipped": "skipped", "failed": "FAILED",
         "xpassed": "XPASS"}


def render(outcomes):
    """The whole page, as markdown."""
    lines = [
        "# What each protection is for: every behaviour, on every server",
        "",
        "Generated by `make protections` from the test results (`tools/protections_table.py`);",
        "`make test` fails when this page no longer matches them. Do not edit it by hand.",
        "",
        "Each WebSocket step has two rungs: `minimal.py`, the post's code made to run and",
        "nothing else, and the hardened step (`app.py` with `chat.py`, `protections.py` and",
        "its start-up file). The same tests run against both. ✓ passes; ✗ is an expected",
        "failure of a first rung, with its reason: what the hardened step adds, and where.",
        "",
        "| Behaviour | " + " | ".join(HEADINGS) + " | What the first rung lacks | Added by |",
        "|---|" + ":-:|" * len(HEADINGS) + "---|---|",
    ]
    problems = []
    for (file, test, params), cells in rows_from(outcomes):
        behaviour = test.removeprefix("test_").replace("_", " ")
        if params:
            behaviour += f" ({params})"
        nodeid = f"{file}::{test}"
        reasons = sorted({cell["reason"] for cell in cells.values() if cell["reason"]})
        marks = []
        for server in SERVERS:
            cell = cells.get(server)
            marks.append(CELLS[cell["outcome"]] if cell else "—")
            if cell and cell["outcome"] not in ("passed", "xfailed"):
                problems.append(f"{nodeid}[{server}]: {cell['outcome']}")
        if reasons and test not in ADDED_BY:
            problems.append(f"{nodeid}: a first rung fails it, but ADDED_BY names no code")
        lines.append(f"| {behaviour}<br>`{nodeid}` | " + " | ".join(marks) + " | "
                     + "; ".join(reasons) + " | " + added_by(test) + " |")
    lines += ["", "Run one row: `.venv/bin/pytest 'tests/FILE::TEST'` (add `-k step03` for one "
              "server).", ""]
    return "\n".join(lines), problems


def main():
    """Write or check docs/protections.md from an outcomes file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outcomes", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args()
    page, problems = render(json.loads(args.outcomes.read_text()))
    skipped = [problem for problem in problems if problem.endswith(": skipped")]
    if skipped and not os.environ.get("CI"):
        print(f"NOTICE: {len(skipped)} tests were skipped (a missing system part): "
              "docs/protections.md not checked.")
        return 0
    if problems:
        print("docs/protections.md cannot be generated from these results:", *problems,
              sep="\n  ")
        return 1
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), page.splitlines(True), "docs/protections.md",
                "from this test run"))
            print("docs/protections.md is stale: run `make protections` and commit it.")
            return 1
        print("docs/protections.md matches this test run.")
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
