"""step05: nothing lost across a reconnect. The chat on a Redis stream, with resume and history.

Every server is a real process and Redis a real redis-server (with its append-only
file where the test restarts it), each on a free loopback port; the clients are the
`websockets` library, resuming as client/client.js does.
"""

import contextlib
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from conftest import REDIS_SERVER, TIMEOUT, RedisServer, open_ws, receive_event

STEP05 = ("step05_resume", [sys.executable, "server.py", "--host", "127.0.0.1",
                            "--port", "{port}"])
STREAM = "chat:events"
QUIET = 1  # seconds of silence that show no further event is coming
RESUME_BOUND = 20  # seconds for a client to get back in once Redis or a process is back
HISTORY, HISTORY_MAX = 10, 500  # backplane.py's defaults
UNAVAILABLE = "chat backplane unavailable, message not delivered"


def order(event_id):
    """A stream id's sort key: "milliseconds-sequence", compared as numbers."""
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence)


class Tab:
    """A chat client that resumes as client/client.js does.

    It keeps the newest event id it has seen and sends it back as ?last_id= when it
    reconnects; each message it says has a msg_id and stays in its outbox until acked,
    and the outbox is sent again after every welcome.
    """

    def __init__(self, name):
        self.name = name
        self.ws = None
        self.last_id = None
        self.texts = []  # the text of every message event received, in order
        self.events = []  # every event received, welcomes included
        self.outbox = {}  # msg_id -> text, until acknowledged
        self.acks = {}  # msg_id -> the ack
        self.said = 0

    def connect(self, server, **params):
        """Join the chat, after last_id if there is one; resend the outbox; return the welcome."""
        if self.last_id:
            params.setdefault("last_id", self.last_id)
        query = "?" + urllib.parse.urlencode(params) if params else ""
        self.ws = open_ws(server, "/chat" + query)
        welcome = receive_event(self.ws)
        self.events.append(welcome)
        assert welcome["type"] == "welcome", welcome
        assert welcome["resume"] is True
        self.last_id = welcome["last_id"]  # what follows is new after this point
        for msg_id, text in self.outbox.items():
            self.ws.send(json.dumps({"msg_id": msg_id, "text": text}))
        return welcome

    def receive(self, timeout=TIMEOUT):
        """Receive one event and keep what a resuming client keeps; return it."""
        event = receive_event(self.ws, timeout)
        self.events.append(event)
        if "event_id" in event and order(event["event_id"]) > order(self.last_id):
            self.last_id = event["event_id"]
        if event["type"] == "message":
            self.texts.append(event["text"])
        elif event["type"] == "ack":
            self.outbox.pop(event["msg_id"], None)
            self.acks[event["msg_id"]] = event
        return event

    def say(self, text):
        """Send a text with a new msg_id (or only queue it, while disconnected); return the id."""
        self.said += 1
        msg_id = f"{self.name}-{self.said}"
        self.outbox[msg_id] = text
        if self.ws is not None:
            self.ws.send(json.dumps({"msg_id": msg_id, "text": text}))
        return msg_id

    def read_until(self, done, timeout=TIMEOUT):
        """Receive events until done() is true; fail after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.name}: not done after {timeout} s: {self.events[-5:]}"
            self.receive(timeout=remaining)

    def read_until_closed(self):
        """Receive what the server sent before the connection ended."""
        with pytest.raises(ConnectionClosed):
            for _ in range(100_000):
                self.receive()
        self.ws = None

    def assert_no_more_messages(self):
        """No message event comes within QUIET seconds: nothing came twice at the end."""
        with contextlib.suppress(TimeoutError):
            for _ in range(1000):  # joins and leaves may still come; a message may not
                assert self.receive(timeout=QUIET)["type"] != "message", self.events[-1]

    def close(self):
        """Leave the chat (the outbox stays, to be sent after the next connect)."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None


def keep_saying(tab, server, texts, interval, deadline):
    """Say each text and wait for its ack; after a close, reconnect and resend, until deadline."""
    for text in texts:
        tab.say(text)
        while tab.outbox:
            try:
                tab.receive()
            except ConnectionClosed:
                reconnect(tab, server, deadline)
        time.sleep(interval)


def reconnect(tab, server, deadline):
    """Connect again until the chat lets the tab in (a join fails with 1011 while Redis is down)."""
    while True:
        try:
            tab.connect(server)
            return
        except (ConnectionClosed, OSError):
            assert time.monotonic() < deadline, f"{tab.name} could not get back in"
            time.sleep(0.2)


@contextlib.contextmanager
def in_background(function, *args):
    """Run function(*args) in a thread; at the end of the block, wait and re-raise its error."""
    errors = []

    def run():
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(120)
        assert not thread.is_alive(), "the background sender did not finish"
        if errors:
            raise errors[0]


@pytest.fixture
def redis_aof(tmp_path):
    """A redis-server with its append-only file (appendfsync everysec) in tmp_path."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(aof_dir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def step05(make_server, redis_aof):
    """Start step05 processes on the Redis with an AOF: step05(), step05(STREAM_MAXLEN="100")."""
    return lambda **env: make_server(
        "step05", *STEP05, env={"REDIS_URL": redis_aof.url, **env})


def texts(prefix, count):
    """The texts a test sends: prefix 0, prefix 1, ..."""
    return [f"{prefix} {number}" for number in range(count)]


# ---- The stream: every event has its id, a newcomer gets the history ----


def test_every_event_carries_its_stream_id_in_order(step05):
    server = step05()
    alice, bob = Tab("alice"), Tab("bob")
    welcome = alice.connect(server)
    bob.connect(server)
    alice.say("hello")
    bob.read_until(lambda: bob.texts == ["hello"])
    alice.read_until(lambda: alice.texts == ["hello"] and not alice.outbox)
    bob.close()
    alice.read_until(lambda: alice.events[-1]["type"] == "leave")
    # Join, message and leave, as step04 sends them, plus their place in the stream.
    events = [event for event in alice.events[1:] if event["type"] != "ack"]
    ids = [event.pop("event_id") for event in events]
    assert events == [{"type": "join", "id": bob.events[0]["id"], "count": 2},
                      {"type": "message", "id": welcome["id"], "text": "hello"},
                      {"type": "leave", "id": bob.events[0]["id"], "count": 1}]
    assert ids == sorted(ids, key=order) and len(set(ids)) == 3
    assert order(ids[0]) > order(welcome["last_id"])  # bob joined after alice's welcome
    # The sender's ack names the message's place in the stream.
    assert alice.acks == {"alice-1": {"type": "ack", "msg_id": "alice-1", "event_id": ids[1],
                                      "duplicate": False}}


@pytest.mark.timeout(120)
def test_two_clients_joining_at_once_on_two_processes_each_count_the_other(step05, redis_aof):
    # A client's count is its welcome's, then each join or leave it hears. Joining at
    # once, the first in the stream hears the other's join; the second counts it in.
    first, second = step05(), step05()
    for attempt in range(20):
        sockets = [None, None]
        threads = [threading.Thread(target=join_into, args=(sockets, index, server))
                   for index, server in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert all(sockets), "a client did not connect"
        for ws in sockets:
            counts = [receive_event(ws)["count"]]  # the welcome
            with contextlib.suppress(TimeoutError):
                while counts[-1] != 2:
                    counts.append(receive_event(ws, timeout=2)["count"])
            assert counts[-1] == 2, f"attempt {attempt}: a client's counts went {counts}"
        for ws in sockets:
            ws.close()
        assert_room_empties(redis_aof)


def join_into(sockets, index, server):
    """Open a /chat connection into sockets[index] (run in a thread, to join at once)."""
    sockets[index] = open_ws(server, "/chat")


def assert_room_empties(redis_server):
    """Wait, up to TIMEOUT seconds, until the chat has no members left."""
    members = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + TIMEOUT
    while members.hlen("chat:members") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert members.hlen("chat:members") == 0
    members.close()


def test_a_newcomer_gets_the_last_messages_then_the_live_chat(step05):
    server = step05()
    sender = Tab("sender")
    sender.connect(server)
    for text in texts("old", 60):
        sender.say(text)
    sender.read_until(lambda: not sender.outbox)
    newcomer = Tab("newcomer")
    newcomer.connect(server)
    newcomer.read_until(lambda: len(newcomer.texts) == HISTORY)
    assert newcomer.texts == texts("old", 60)[-HISTORY:]
    sender.say("live")
    newcomer.read_until(lambda: newcomer.texts[-1:] == ["live"])
    few = Tab("few")
    few.connect(server, history="3")
    few.read_until(lambda: len(few.texts) == 3)
    assert few.texts == ["old 58", "old 59", "live"]
    none = Tab("none")
    none.connect(server, history="0")
    sender.say("only this")
    none.read_until(lambda: none.texts)
    assert none.texts == ["only this"]


# ---- Resume: what a client missed, in order, once ----


@pytest.mark.timeout(120)
def test_clients_of_a_killed_process_resume_on_the_other_and_miss_nothing(step05):
    first, second = step05(), step05()
    watcher_first, watcher_second = Tab("watcher-first"), Tab("watcher-second")
    watcher_first.connect(first)
    watcher_second.connect(second)
    sender = Tab("sender")
    sender.connect(first)
    expected = texts("message", 300)
    deadline = time.monotonic() + 60
    with in_background(keep_saying, sender, first, expected, 0.005, deadline):
        watcher_second.read_until(lambda: len(watcher_second.texts) >= 50)
        second.stop(signal.SIGKILL)  # mid-chat, no goodbye: its clients see the socket drop
        watcher_second.read_until_closed()
        seen = len(watcher_second.texts)
        assert 50 <= seen < 300, "the kill did not come mid-chat"
        watcher_second.connect(first)  # with the last id it saw on the dead process
    for watcher in (watcher_first, watcher_second):
        watcher.read_until(lambda watcher=watcher: len(watcher.texts) >= 300, timeout=30)
        watcher.assert_no_more_messages()
        assert watcher.texts == expected  # all of them, in order, each once


@pytest.mark.timeout(120)
def test_a_client_offline_10_s_gets_the_500_messages_it_missed_in_order_once(step05):
    server = step05()
    away, sender = Tab("away"), Tab("sender")
    away.connect(server)
    sender.connect(server)
    sender.say("before")
    away.read_until(lambda: away.texts == ["before"])
    away.close()
    went = time.monotonic()
    deadline = went + 90
    keep_saying(sender, server, texts("missed", 500), 0.01, deadline)
    time.sleep(max(0.0, went + 10 - time.monotonic()))  # away 10 s in all
    # It comes back while more messages flow: the seam between replay and live.
    with in_background(keep_saying, sender, server, texts("live", 50), 0.01, deadline):
        away.connect(server)
        away.read_until(lambda: len(away.texts) >= 551, timeout=60)
    away.assert_no_more_messages()
    assert away.texts == ["before", *texts("missed", 500), *texts("live", 50)]


def test_a_client_away_past_maxlen_gets_a_gap_event_then_the_rest(step05):
    server = step05(STREAM_MAXLEN="100")
    away, sender = Tab("away"), Tab("sender")
    away.connect(server)
    sender.connect(server)
    sender.say("seen")
    away.read_until(lambda: away.texts == ["seen"])
    last_seen = away.last_id
    away.close()
    expected = texts("message", 400)
    keep_saying(sender, server, expected, 0, time.monotonic() + 30)
    welcome = away.connect(server)
    assert welcome["last_id"] == last_seen
    gap = away.receive()
    assert gap["type"] == "gap" and order(gap["since"]) > order(last_seen)
    first = away.receive()
    assert first["event_id"] == gap["since"]  # the replay starts where the stream does
    away.read_until(lambda: away.texts[-1:] == [expected[-1]], timeout=15)
    away.assert_no_more_messages()
    # At least MAXLEN entries (~ trims whole nodes of 100), the newest its own join: the
    # newest messages, in order, each once.
    kept = away.texts[1:]  # after "seen", which it had
    assert 99 <= len(kept) < 400
    assert kept == expected[-len(kept):]


# ---- Exactly once for what a client sends ----


def test_a_message_whose_ack_was_cut_off_is_resent_and_shown_once(step05):
    server = step05()
    observer, typer = Tab("observer"), Tab("typer")
    observer.connect(server)
    typer.connect(server)
    first = typer.say("first")
    # Cut the connection right after sending: the server stores "first", the ack is lost.
    typer.ws.socket.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        typer.ws.close()
    typer.ws = None
    observer.read_until(lambda: observer.texts == ["first"])
    typer.say("typed while offline")
    typer.say("and another")
    assert list(typer.outbox) == [first, "typer-2", "typer-3"]  # "first" was never acked
    typer.connect(server)  # resends the outbox: "first" again, then the two new ones
    typer.read_until(lambda: not typer.outbox)
    assert typer.acks[first]["duplicate"] is True
    assert [typer.acks[f"typer-{n}"]["duplicate"] for n in (2, 3)] == [False, False]
    expected = ["first", "typed while offline", "and another"]
    for tab in (observer, typer):
        tab.read_until(lambda tab=tab: len(tab.texts) >= 3)
        tab.assert_no_more_messages()
        assert tab.texts == expected


@pytest.mark.timeout(120)
def test_a_redis_restart_loses_no_acknowledged_message(step05, redis_aof):
    first, second = step05(), step05()
    watchers = [Tab("watcher-first"), Tab("watcher-second")]
    watchers[0].connect(first)
    watchers[1].connect(second)
    sender = Tab("sender")
    sender.connect(first)
    expected = texts("message", 200)
    deadline = time.monotonic() + 60
    with in_background(keep_saying, sender, first, expected, 0.01, deadline):
        watchers[0].read_until(lambda: len(watchers[0].texts) >= 50)
        redis_aof.stop()  # SIGKILL, mid-chat
        time.sleep(1)
        redis_aof.start()  # the same port and AOF: the processes reconnect by themselves
    assert len(sender.acks) == 200
    # Every acknowledged message is in the stream that Redis read back from its AOF.
    stored = dict(redis.Redis.from_url(redis_aof.url, decode_responses=True).xrange(STREAM))
    for ack in sender.acks.values():
        assert ack["event_id"] in stored
    # The watchers never reconnected: their processes read on from where they were.
    for watcher in watchers:
        watcher.read_until(lambda watcher=watcher: len(watcher.texts) >= 200, timeout=30)
        watcher.assert_no_more_messages()
        assert watcher.texts == expected
        assert sum(event["type"] == "welcome" for event in watcher.events) == 1
    # The sender resumed, likely before its process read the stream again: the events
    # its catch-up sent are not sent again when the process's reader comes to them.
    sender.read_until(lambda: len(sender.texts) >= 200, timeout=30)
    sender.assert_no_more_messages()
    assert sender.texts == expected


def test_while_redis_is_down_plain_text_gets_an_error_and_a_message_with_an_id_1011(
        step05, redis_aof):
    server = step05()
    tab = Tab("tab")
    tab.connect(server)
    tab.say("joined")  # answered once its join and catch-up are over
    # The ack can come before the message itself, which the stream reader delivers: wait
    # for both, or the message would be read below in place of the error.
    tab.read_until(lambda: not tab.outbox and "joined" in tab.texts)
    redis_aof.stop()
    tab.ws.send("plain text")
    assert tab.receive() == {"type": "error", "error": UNAVAILABLE}
    ws = tab.ws
    tab.say("with an id")  # it stays in the outbox: the client sends it again later
    tab.read_until_closed()
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
        1011, "chat backplane unavailable")
    assert list(tab.outbox) == ["tab-2"]


# ---- Bad input: an error event or a close code, the server unaffected ----


def assert_still_chatting(tab, server):
    """The tab's connection still works, and a new client can join and chat."""
    tab.say("still here")
    tab.read_until(lambda: tab.texts[-1:] == ["still here"])
    other = Tab("other")
    other.connect(server, history="0")
    other.say("me too")
    other.read_until(lambda: other.texts == ["me too"])


@pytest.fixture
def chat_with_history(step05):
    """A step05 server whose chat has two messages; returns (server, their event ids)."""
    server = step05()
    sender = Tab("sender")
    sender.connect(server)
    for text in ("one", "two"):
        sender.say(text)
    sender.read_until(lambda: not sender.outbox)
    return server, [ack["event_id"] for ack in sender.acks.values()]


@pytest.mark.parametrize("last_id", ["abc", "12-34-56", "", "-1-0", "1" * 30 + "-0", "1.5-0"])
def test_a_malformed_last_id_gets_an_error_then_the_history(chat_with_history, last_id):
    server, _ = chat_with_history
    tab = Tab("tab")
    welcome = tab.connect(server, last_id=last_id)
    error = tab.receive()
    assert error["type"] == "error"
    assert "is not a stream id" in error["error"] and "the history instead" in error["error"]
    tab.read_until(lambda: tab.texts == ["one", "two"])
    assert welcome["last_id"] != last_id  # it starts as a newcomer
    assert_still_chatting(tab, server)


def test_a_last_id_given_twice_gets_an_error(chat_with_history):
    server, ids = chat_with_history
    url = "/chat?" + urllib.parse.urlencode([("last_id", ids[0]), ("last_id", ids[1])])
    with open_ws(server, url) as ws:
        assert receive_event(ws)["type"] == "welcome"
        assert "is not a stream id" in receive_event(ws)["error"]


def test_a_last_id_from_the_future_gets_an_error(chat_with_history):
    server, ids = chat_with_history
    milliseconds = order(ids[-1])[0] + 3_600_000  # an hour after the newest event
    tab = Tab("tab")
    tab.connect(server, last_id=f"{milliseconds}-0")
    error = tab.receive()
    assert error["type"] == "error" and "newer than every event" in error["error"]
    tab.read_until(lambda: tab.texts == ["one", "two"])
    assert_still_chatting(tab, server)


def test_an_id_from_another_stream_gets_an_error(step05, redis_aof):
    server = step05()
    sender = Tab("sender")
    sender.connect(server)
    sender.say("before")
    sender.read_until(lambda: not sender.outbox)
    time.sleep(0.01)  # another millisecond: the other stream's id is not one of ours
    foreign = redis.Redis.from_url(redis_aof.url).xadd("other:stream", {"k": "v"}).decode()
    time.sleep(0.01)
    sender.say("after")
    sender.read_until(lambda: not sender.outbox)
    tab = Tab("tab")
    tab.connect(server, last_id=foreign)
    error = tab.receive()
    assert error["type"] == "error" and "is not an event of this chat" in error["error"]
    tab.read_until(lambda: tab.texts == ["before", "after"])
    assert_still_chatting(tab, server)


def test_a_replayed_msg_id_is_acknowledged_again_and_not_delivered_twice(step05):
    server = step05()
    observer, tab = Tab("observer"), Tab("tab")
    observer.connect(server)
    tab.connect(server)
    message = json.dumps({"msg_id": "tab-once", "text": "once"})
    tab.ws.send(message)
    tab.read_until(lambda: "tab-once" in tab.acks)
    first_ack = tab.acks.pop("tab-once")
    tab.ws.send(message)  # the same msg_id again, as a client does after a lost ack
    tab.read_until(lambda: "tab-once" in tab.acks)
    assert tab.acks["tab-once"] == {**first_ack, "duplicate": True}
    observer.read_until(lambda: observer.texts == ["once"])
    observer.assert_no_more_messages()
    assert_still_chatting(tab, server)


@pytest.mark.parametrize("history", [str(HISTORY_MAX + 1), "-1", "lots", "1e3", "²"])
def test_a_history_request_out_of_bounds_gets_an_error_and_the_default(step05, history):
    server = step05()
    sender = Tab("sender")
    sender.connect(server)
    for text in texts("old", HISTORY + 5):
        sender.say(text)
    sender.read_until(lambda: not sender.outbox)
    tab = Tab("tab")
    tab.connect(server, history=history)
    error = tab.receive()
    assert error == {"type": "error", "error": f"history is 0 to {HISTORY_MAX} messages, "
                                               f"not {history!r}: {HISTORY} sent instead"}
    tab.read_until(lambda: len(tab.texts) == HISTORY)
    assert tab.texts == texts("old", HISTORY + 5)[-HISTORY:]
    assert_still_chatting(tab, server)


@pytest.mark.parametrize("message", [
    "{not json", '{"text": "no msg_id"}', '{"msg_id": "a b", "text": "space in the id"}',
    '{"msg_id": "' + "x" * 65 + '", "text": "id too long"}', '{"msg_id": 7, "text": "number"}',
    '{"msg_id": "ok", "text": ["not", "text"]}', '{"msg_id": "ok"}',
])
def test_a_malformed_message_with_an_id_gets_an_error(step05, message):
    server = step05()
    tab = Tab("tab")
    tab.connect(server)
    tab.ws.send(message)
    error = tab.receive()
    assert error["type"] == "error" and error["error"].startswith('a message that starts with "{"')
    assert_still_chatting(tab, server)


def test_an_empty_message_with_an_id_gets_an_error_naming_it(step05):
    server = step05()
    tab = Tab("tab")
    tab.connect(server)
    msg_id = tab.say("   ")
    assert tab.receive() == {"type": "error", "error": "a chat message has 1 to 2000 characters",
                             "msg_id": msg_id}
    assert_still_chatting(tab, server)


# ---- Without Redis: step04's room in memory, no resume ----


def test_step05_without_redis_url_offers_no_resume(make_server):
    server = make_server("step05", *STEP05, env={"REDIS_URL": ""})
    with open_ws(server, "/chat?last_id=1-0") as ws:
        welcome = receive_event(ws)
        assert "resume" not in welcome and "last_id" not in welcome
        ws.send("alone")
        assert receive_event(ws) == {"type": "message", "id": welcome["id"], "text": "alone"}
    assert "no resume" in server.output()


# ---- The first rung, and a process that starts before Redis ----

MINIMAL = ("step05_resume", [sys.executable, "minimal.py"])


def test_the_first_rung_resumes_from_last_id(make_server, redis_aof):
    first, second = (make_server("step05-minimal", *MINIMAL, env={"REDIS_URL": redis_aof.url})
                     for _ in range(2))
    with open_ws(first, "/chat") as a:
        b = open_ws(second, "/chat")
        time.sleep(0.5)  # each relay starts after the newest event: let it start first
        a.send("hello")
        seen = receive_event(b)
        assert {key: seen[key] for key in ("type", "text")} == {"type": "message", "text": "hello"}
        b.close()
        a.send("while b is away")
        assert receive_event(a)["text"] == "hello"
        missed = receive_event(a)
        with open_ws(second, f"/chat?last_id={seen['event_id']}") as b:
            assert receive_event(b) == missed  # the same event, with the same event_id


def test_the_first_rung_goes_silent_on_a_bad_last_id(make_server, redis_aof):
    server = make_server("step05-minimal", *MINIMAL, env={"REDIS_URL": redis_aof.url})
    with open_ws(server, "/chat?last_id=abc") as ws:
        ws.send("anyone?")
        with pytest.raises(TimeoutError):  # its XREAD failed: no error, no message, nothing
            ws.recv(timeout=2)


def test_a_process_started_before_redis_refuses_joins_until_it_reads_the_stream(make_server):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis_later = RedisServer()  # its port chosen, nothing listening yet
    server = make_server("step05", *STEP05, env={"REDIS_URL": redis_later.url})
    try:
        with open_ws(server, "/chat") as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
            1011, "chat backplane unavailable")
        redis_later.start()
        tab = Tab("tab")
        reconnect(tab, server, time.monotonic() + RESUME_BOUND)
        tab.say("the chat has started")
        tab.read_until(lambda: tab.texts == ["the chat has started"])
    finally:
        redis_later.stop()
