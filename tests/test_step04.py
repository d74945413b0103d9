"""step04: one chat across several server processes, with Redis as the backplane.

Every server is a real process and Redis a real redis-server, each on a free
loopback port; the clients are the `websockets` library.
"""

import contextlib
import signal
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import TIMEOUT, open_ws, receive_event

QUIET = 2  # seconds of silence that show an event is not coming
# The README's numbers, and the slack a busy 2-core machine needs on top of each.
SLACK = 2  # seconds
# A killed process's leaves: its key expires (PROCESS_TTL, 6 s), then the next sweep
# (every HEARTBEAT_INTERVAL, 2 s) announces them: "within about 8 s".
LEAVE_BOUND = 6 + 2 + SLACK
# After a Redis restart: members written again by the next heartbeat (2 s), and the
# subscription made again (retried every 1 s) before a join can be announced.
RESUME_BOUND = 2 + 1 + SLACK
UNAVAILABLE = "chat backplane unavailable, message not delivered"
STEP04 = ("step04_scale_out", [sys.executable, "server.py", "--port", "{port}"])


@pytest.fixture
def step04_pair(make_server, redis_server):
    """Two step04 processes sharing one Redis."""
    env = {"REDIS_URL": redis_server.url}
    return [make_server(f"step04-{name}", *STEP04, env=env) for name in "ab"]


@pytest.fixture
def open_chat():
    """Join the chat on a server, returning the socket and its welcome; close all after."""
    with contextlib.ExitStack() as sockets:

        def open_(server):
            url = server.ws_url + "/chat"
            ws = sockets.enter_context(connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT))
            welcome = receive_event(ws)
            assert welcome["type"] == "welcome"
            return ws, welcome

        yield open_




def assert_silent(ws):
    """Assert that no event arrives within QUIET seconds."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=QUIET)


def test_step03_processes_do_not_share_the_chat(make_server, open_chat):
    first, second = make_server("step03"), make_server("step03")
    a, _ = open_chat(first)
    b, welcome = open_chat(second)
    assert welcome["count"] == 1  # b cannot see a
    a.send("hello, anyone?")
    assert receive_event(a)["text"] == "hello, anyone?"
    assert_silent(b)


def test_step04_without_redis_url_is_one_process_in_memory(make_server, open_chat):
    server = make_server("step04", *STEP04, env={"REDIS_URL": ""})
    a, welcome = open_chat(server)
    assert welcome["count"] == 1
    a.send("alone")
    assert receive_event(a) == {"type": "message", "id": welcome["id"], "text": "alone"}
    assert "REDIS_URL is not set" in server.output()


def test_messages_reach_clients_of_every_process(step04_pair, open_chat):
    a, welcome_a = open_chat(step04_pair[0])
    b, welcome_b = open_chat(step04_pair[1])
    assert receive_event(a)["type"] == "join"
    for number in range(20):
        a.send(f"a{number}")
    b.send("from b")
    sent_by_a = [{"type": "message", "id": welcome_a["id"], "text": f"a{n}"} for n in range(20)]
    from_b = {"type": "message", "id": welcome_b["id"], "text": "from b"}
    for ws in (a, b):
        events = [receive_event(ws) for _ in range(21)]
        # In order per sender: a's twenty, with b's one somewhere among them.
        assert [event for event in events if event != from_b] == sent_by_a
        assert from_b in events


def test_presence_is_global(step04_pair, open_chat):
    a, welcome_a = open_chat(step04_pair[0])
    assert welcome_a["count"] == 1
    b, welcome_b = open_chat(step04_pair[1])
    assert welcome_b["count"] == 2
    assert receive_event(a) == {"type": "join", "id": welcome_b["id"], "count": 2}
    b.close()
    assert receive_event(a) == {"type": "leave", "id": welcome_b["id"], "count": 1}


def test_sender_gets_an_error_while_redis_is_down(step04_pair, redis_server, open_chat):
    b, _ = open_chat(step04_pair[1])
    a, welcome_a = open_chat(step04_pair[0])
    # b hears a's join: a's joining is over before Redis goes.
    assert receive_event(b)["id"] == welcome_a["id"]
    redis_server.stop()
    a.send("is anyone there?")
    assert receive_event(a) == {"type": "error", "error": UNAVAILABLE}


def resume_chat(sender, receiver):
    """Send probes until one reaches the receiver; False if none did within RESUME_BOUND."""
    deadline = time.monotonic() + RESUME_BOUND
    while time.monotonic() < deadline:
        sender.send("probe")
        if receive_event(sender)["type"] == "message":
            try:
                return receive_event(receiver, timeout=1)["text"] == "probe"
            except TimeoutError:
                pass  # The receiver's process has not subscribed again yet.
        time.sleep(0.5)
    return False


def test_chat_resumes_after_redis_restarts(step04_pair, redis_server, open_chat):
    a, welcome_a = open_chat(step04_pair[0])
    b, welcome_b = open_chat(step04_pair[1])
    assert receive_event(a)["type"] == "join"
    redis_server.stop()
    redis_server.start()
    assert resume_chat(a, b), f"no message went through {RESUME_BOUND} s after the restart"
    b.send("back again")
    expected = {"type": "message", "id": welcome_b["id"], "text": "back again"}
    assert receive_event(a) == expected
    assert receive_event(b) == expected


def test_a_new_chat_client_is_closed_with_1011_while_redis_is_down(step04_pair, redis_server):
    redis_server.stop()
    with open_ws(step04_pair[0], "/chat") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
        1011, "chat backplane unavailable")


def test_every_client_sees_the_same_order(step04_pair, open_chat):
    a, _ = open_chat(step04_pair[0])
    b, _ = open_chat(step04_pair[1])
    c, _ = open_chat(step04_pair[0])
    # Wait until every join has reached everyone: a sees two, b sees c's.
    assert [receive_event(a)["type"] for _ in range(2)] == ["join", "join"]
    assert receive_event(b)["type"] == "join"
    # Two senders on two processes, interleaved as fast as they can.
    for number in range(20):
        a.send(f"a{number}")
        b.send(f"b{number}")
    orders = [[receive_event(ws)["text"] for _ in range(40)] for ws in (a, b, c)]
    assert orders[0] == orders[1] == orders[2]


def test_a_stopped_process_announces_its_clients_leaving_at_once(step04_pair, open_chat):
    a, _ = open_chat(step04_pair[0])
    _, welcome_b = open_chat(step04_pair[1])
    assert receive_event(a)["type"] == "join"
    step04_pair[1].stop()  # SIGTERM: a normal stop, no sweep needed
    event = receive_event(a, timeout=SLACK)
    assert event == {"type": "leave", "id": welcome_b["id"], "count": 1}


def test_presence_is_restored_after_redis_restarts(step04_pair, redis_server, open_chat):
    a, _ = open_chat(step04_pair[0])
    b, _ = open_chat(step04_pair[1])
    assert receive_event(a)["type"] == "join"  # b's joining is over before Redis goes
    redis_server.stop()
    redis_server.start()  # empty: the processes register their clients again
    deadline = time.monotonic() + RESUME_BOUND
    counts = []
    while time.monotonic() < deadline and counts[-1:] != [3]:
        try:
            c, welcome = open_chat(step04_pair[0])
            c.close()
            counts.append(welcome["count"])
        except ConnectionClosed:
            counts.append(None)  # Not subscribed again yet: refused with 1011.
        time.sleep(0.5)
    assert counts[-1:] == [3], counts


def test_killed_process_clients_leave_within_bound(step04_pair, open_chat):
    a, _ = open_chat(step04_pair[0])
    _, welcome_b = open_chat(step04_pair[1])
    assert receive_event(a)["type"] == "join"
    step04_pair[1].stop(signal.SIGKILL)
    event = receive_event(a, timeout=LEAVE_BOUND)
    assert event == {"type": "leave", "id": welcome_b["id"], "count": 1}
