"""The teaching shape: every WebSocket step has the same files, small enough to read side by side.

These tests read files only; no server starts.
"""

import difflib
import itertools
import re

import pytest

from conftest import ROOT

# The files each WebSocket step has: the app, its chat room, its protections, its start-up,
# and its first rung (minimal.py: the post's code made to run).
STEP_FILES = {
    "step02_ws_gevent": ["app.py", "chat.py", "protections.py", "wsgi.py", "minimal.py"],
    "step03_ws_asgi": ["app.py", "chat.py", "protections.py", "server.py", "minimal.py"],
    "step04_scale_out": ["app.py", "chat.py", "protections.py", "server.py", "minimal.py"],
    "step05_resume": ["app.py", "chat.py", "protections.py", "server.py", "minimal.py"],
    # step06 has no first rung (the post has no login, no proxy, no limits); it adds the
    # login, the limits, nginx's config and what starts the whole deployment.
    "step06_production": ["app.py", "chat.py", "protections.py", "server.py", "backplane.py",
                          "auth.py", "limits.py", "nginx.conf", "stack.py"],
}
MAX_APP_LINES = {"step06_production": 130}  # its three routes and middleware more; else 120
# The post's code made to run: 50 lines. step04's rung adds the Redis relay to step03's.
# step05's swaps the relay for a stream that each client reads from its last id.
MAX_MINIMAL_LINES = {"step02_ws_gevent": 50, "step03_ws_asgi": 50, "step04_scale_out": 80,
                     "step05_resume": 80}
MAX_STEP02_TO_STEP03_DIFF = 150  # lines of `diff -u step02/app.py step03/app.py`

# step04 runs step03's app on the same uvicorn with the same protections: only the
# chat changes (Redis behind it). So these are copies, and must change together.
# step05 changes only the chat again (a Redis stream instead of pub/sub): the same copies.
IDENTICAL = [
    ("step03_ws_asgi/protections.py", "step04_scale_out/protections.py"),
    ("step03_ws_asgi/server.py", "step04_scale_out/server.py"),
    ("step03_ws_asgi/protections.py", "step05_resume/protections.py"),
    ("step03_ws_asgi/server.py", "step05_resume/server.py"),
    # step06 keeps the protections; its server.py differs (proxy headers: tested below).
    ("step03_ws_asgi/protections.py", "step06_production/protections.py"),
    ("step04_scale_out/protections.py", "step05_resume/protections.py"),
    ("step04_scale_out/server.py", "step05_resume/server.py"),
    ("step04_scale_out/protections.py", "step06_production/protections.py"),
    ("step05_resume/protections.py", "step06_production/protections.py"),
]

# What step04's app.py may change in step03's: the Redis room, and nothing else.
STEP04_CHANGES = [
    r"Step [34]",  # the module docstring
    r"import os",  # to read REDIS_URL
    r"REDIS_URL",
    r"backplane|RedisRoom",
    r"\broom\b|\bRoom\b",
    r"middleware",  # the room joins the middleware, to run its background tasks
    r"\blog\b",
]

# What step05's app.py may change in step04's: the docstrings, and the query parameters
# (?last_id=, ?history=) that the room reads to catch a client up.
STEP05_CHANGES = [
    r"Step [45]",  # the module docstring
    r"Chat until the client leaves",  # ChatResource.on_websocket's docstring
    r"room\.chat\(ws",  # the room is given the query parameters too
    r"REDIS_URL is not set",  # the log line says there is no resume without Redis
]

# What step06's app.py may change in step05's: the login and the limits, and nothing else.
STEP06_CHANGES = [
    r"Step [56]",  # the module docstring
    r"\bsessions?\b|Sessions|SessionInfo|Login|Logout|\bauth\b",
    r"\blimits?\b|HandshakeLimit",
    r"REDIS_URL|import sys|\blog\b|\bRoom\b|backplane",  # Redis is needed now, for all three
    r"Chat as the session's user|Chat until the client leaves",
    r"before the upgrade|middleware|handshake rate|background tasks|shared by every process",
    r"^def __init__\(self, (room, )?sessions\):$|^def __init__\(self, room\):$",
    r"^(with )?open_websockets\.track\(ws\)",
    r"room\.chat\(ws|RedisRoom|WebSocketAPI\(|ChatResource\(",
]
# What step06's server.py may change in step05's: whose X-Forwarded-For to believe.
STEP06_SERVER_CHANGES = [r"FORWARDED_ALLOW_IPS|proxy_headers|X-Forwarded|proxy's address"]


def lines(path):
    """The lines of a file in the repository, with their line endings."""
    return (ROOT / path).read_text().splitlines(keepends=True)


def unified_diff(old, new):
    """The lines of `diff -u old new`, for two files in the repository."""
    return list(difflib.unified_diff(lines(old), lines(new), old, new))


def changed_lines(diff):
    """The added and removed lines of a unified diff, without the +/- and blank lines."""
    return [
        line[1:].strip()
        for line in diff
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]


def identical_pairs():
    """Every pair of same-named files in two step folders whose bytes are the same."""
    pairs = []
    for first, second in itertools.combinations(sorted(STEP_FILES), 2):
        for name in sorted(set(STEP_FILES[first]) & set(STEP_FILES[second])):
            a, b = f"{first}/{name}", f"{second}/{name}"
            if (ROOT / a).read_bytes() == (ROOT / b).read_bytes():
                pairs.append((a, b))
    return pairs


@pytest.mark.parametrize(
    "path", [f"{step}/{name}" for step, names in STEP_FILES.items() for name in names]
)
def test_step_has_its_file(path):
    """Each WebSocket step has its app, chat, protections, start-up file (and first rung)."""
    assert (ROOT / path).is_file(), f"{path} is missing"


@pytest.mark.parametrize("step", sorted(STEP_FILES))
def test_app_is_short(step):
    """Each step's app.py reads in one sitting."""
    count = len(lines(f"{step}/app.py"))
    assert count <= MAX_APP_LINES.get(step, 120), f"{step}/app.py has {count} lines"


@pytest.mark.parametrize("step", sorted(path.parent.name for path in ROOT.glob("*/minimal.py")))
def test_minimal_is_short(step):
    """Each first rung, wherever there is one, stays the post's code plus its fixes."""
    count = len(lines(f"{step}/minimal.py"))
    assert count <= MAX_MINIMAL_LINES[step], f"{step}/minimal.py has {count} lines"


def test_step02_to_step03_app_diff_is_small():
    """Moving the app from gevent to ASGI is a diff one can read."""
    diff = unified_diff("step02_ws_gevent/app.py", "step03_ws_asgi/app.py")
    assert len(diff) <= MAX_STEP02_TO_STEP03_DIFF, f"the diff has {len(diff)} lines"


@pytest.mark.parametrize("pair", IDENTICAL, ids=lambda pair: pair[1])
def test_shared_file_is_identical(pair):
    """A file step04 shares with step03 is the same, byte for byte."""
    first, second = pair
    assert (ROOT / first).read_bytes() == (ROOT / second).read_bytes(), "".join(
        unified_diff(first, second)
    )


def test_only_the_shared_files_are_identical():
    """No other file is a silent copy of another step's: IDENTICAL is the whole list."""
    assert identical_pairs() == IDENTICAL


def test_step04_app_changes_only_the_room():
    """step04's app.py is step03's with the Redis room; every other line is the same."""
    diff = unified_diff("step03_ws_asgi/app.py", "step04_scale_out/app.py")
    unexpected = [
        line for line in changed_lines(diff)
        if not any(re.search(pattern, line) for pattern in STEP04_CHANGES)
    ]
    assert unexpected == [], "".join(diff)


def test_step05_app_changes_only_what_the_room_reads():
    """step05's app.py is step04's, except that the room reads the query parameters."""
    diff = unified_diff("step04_scale_out/app.py", "step05_resume/app.py")
    unexpected = [
        line for line in changed_lines(diff)
        if not any(re.search(pattern, line) for pattern in STEP05_CHANGES)
    ]
    assert unexpected == [], "".join(diff)


@pytest.mark.parametrize("old, new, allowed", [
    ("step05_resume/app.py", "step06_production/app.py", STEP06_CHANGES),
    ("step05_resume/server.py", "step06_production/server.py", STEP06_SERVER_CHANGES),
], ids=["app.py", "server.py"])
def test_step06_changes_only_the_login_limits_and_proxy(old, new, allowed):
    """step06's app.py and server.py are step05's, plus the login, the limits and the proxy."""
    diff = unified_diff(old, new)
    unexpected = [line for line in changed_lines(diff)
                  if not any(re.search(pattern, line) for pattern in allowed)]
    assert unexpected == [], "".join(diff)
