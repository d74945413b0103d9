"""Soak: many chat clients on each server for minutes; nothing lost, duplicated or deaf.

    python tools/soak.py                   # 5 minutes, 1,000 clients, each hardened server
    python tools/soak.py --quick           # 0.5 minute, 200 clients, pings every 5 s: for CI
    python tools/soak.py --minutes 1 --servers step03

Each server runs on a free loopback port (step04-redis with a throwaway redis-server).
N clients join /chat through the `websockets` asyncio client, in batches. A few of
them (the senders) send "soak <key> <seq> <time>" at --rate messages/s in all: every
receiver checks each sender's messages for order, duplicates and latency. Meanwhile
--pause-fraction of the clients stop reading for 1 to 60 s (on a small receive buffer,
so the server sees them stall), and 1% leave and join again. A pause longer than the
server's ping interval and timeout (20 s each; --ping changes both) gets the client
dropped; --quick makes them 5 s, so that half a minute has pauses that long.

Each connection is a membership, from its welcome to its end. Every message sent in
that window must arrive once, in order; unless the server closed the connection (a
close frame, or the TCP connection ending): then the client was dropped, which it
sees, and joins again as a new membership ("closed-and-rejoined"). At the end the
senders stop, the clients get a few seconds to receive what is on its way, and every
membership still open must have had every message: one missing some is "open but
deaf". The server's memory (RSS; gunicorn's worker) is read after a warm-up and again
once every client has left: the end may be at most 10% above the warm-up.

One markdown table row per server. The exit status is 1 if any server lost,
duplicated or reordered a message, left a client open but deaf, grew its memory past
the bound, or did not finish in time; else 0.
"""

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import socket
import subprocess
import sys
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import (  # noqa: E402
    HARDENED_SERVERS,
    REDIS_SERVER,
    SERVERS,
    STEP06_UNLIMITED,
    RedisServer,
    Server,
    authenticate,
)

# The load.
SENDERS = 5  # clients that send; every client, senders included, receives
CHURN_FRACTION = 0.01  # clients that leave and join again, over and over
CHURN_STAY = (5, 20)  # seconds a churning client stays before it leaves
PAUSE_SECONDS = (1, 60)  # how long a pausing client stops reading, clamped to the run
PAUSE_RCVBUF = 4096  # bytes of receive buffer of a pausing client: the server soon sees it
PAUSE_MAX_QUEUE = 1  # messages websockets buffers before it stops reading the socket
CONNECT_BATCH = 50  # handshakes in flight at once, below every server's backlog
LEAVE_BATCH = 20  # clients leaving at once at the end
CONNECT_ATTEMPTS = 3  # per client, while the room fills

# The timings; every wait has one of these as its limit.
OPEN_TIMEOUT = 20  # seconds for a handshake and its welcome
CLOSE_TIMEOUT = 2  # seconds for a close handshake
SEND_TIMEOUT = 5  # seconds for one send to be written
CONNECT_BUDGET = 40  # seconds for the room to fill
WARMUP = 5  # seconds of traffic before the first memory reading
DRAIN_TIMEOUT = 10  # seconds after the last send for what is on its way
LEAVE_DRAIN_TIMEOUT = 5  # seconds a leaving client waits for what was sent before it left
FINAL_CLOSE_TIMEOUT = 20  # seconds for every client to close at the end
EMPTY_TIMEOUT = 5  # seconds for the server's room to empty once they did
REJOIN_DELAY = 0.5  # seconds before a dropped client joins again
STOP_TIMEOUT = 5  # seconds for the server to stop on SIGTERM before SIGKILL
SLACK = 60  # seconds per server beyond --minutes, start to stop
AFTER_RUN = 12  # of them, kept for the room to empty, the memory reading and the stop
MEMORY_GROWTH = 0.10  # the end's RSS may be this much above the warm-up's
RSS_EVERY = 10  # seconds between memory readings during the run, for the log

HISTOGRAM_STEP = 0.1  # ms per latency bucket
HISTOGRAM_BUCKETS = 100_000  # up to 10 s; later ones are kept apart

COLUMNS = ["server", "clients", "messages sent", "delivered", "closed-and-rejoined", "lost",
           "duplicated", "open-but-deaf", "p50 ms", "p99 ms", "RSS warm MiB", "RSS end MiB"]


def log(text):
    """Progress, on stderr: stdout has the table."""
    print(f"soak: {text}", file=sys.stderr, flush=True)


def raise_fd_limit():
    """Allow as many open sockets as the hard limit: each client is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib(pid):
    """Resident memory of a process, from /proc, in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def children(pid):
    """The child processes of pid (gunicorn's workers)."""
    try:
        listing = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in listing.split()]
    except OSError:
        return []


def serving_pid(server):
    """The process that serves the chat: gunicorn's worker, else the server itself."""
    if server.name == "step02-gunicorn":
        workers = children(server.process.pid)
        return workers[0] if workers else None
    return server.process.pid


class Track:
    """The messages of one sender key that one membership received: a run, with its holes."""

    __slots__ = ("first", "last", "gaps", "duplicates", "reordered")

    def __init__(self, seq):
        self.first = self.last = seq
        self.gaps = []  # [lo, hi] ranges of missing sequence numbers between first and last
        self.duplicates = 0
        self.reordered = 0

    def add(self, seq):
        """Record one received sequence number."""
        if seq == self.last + 1:
            self.last = seq
        elif seq > self.last:
            self.gaps.append([self.last + 1, seq - 1])
            self.last = seq
        elif seq < self.first:
            self.reordered += 1
            if seq < self.first - 1:
                self.gaps.insert(0, [seq + 1, self.first - 1])
            self.first = seq
        else:
            for index, (lo, hi) in enumerate(self.gaps):
                if lo <= seq <= hi:
                    # Late, filling a hole: received, but out of order.
                    self.reordered += 1
                    holes = [[lo, seq - 1]] if lo < seq else []
                    holes += [[seq + 1, hi]] if seq < hi else []
                    self.gaps[index:index + 1] = holes
                    return
            self.duplicates += 1

    def count_in(self, lo, hi):
        """How many distinct sequence numbers in [lo, hi] were received."""
        start, end = max(lo, self.first), min(hi, self.last)
        if start > end:
            return 0
        count = end - start + 1
        for gap_lo, gap_hi in self.gaps:
            count -= max(0, min(end, gap_hi) - max(start, gap_lo) + 1)
        return count

    def missing_in(self, lo, hi):
        """The sequence numbers in [lo, hi] not received, as ranges (lo, hi)."""
        ranges = [(lo, min(hi, self.first - 1)), (max(lo, self.last + 1), hi)]
        ranges += [(max(lo, gap_lo), min(hi, gap_hi)) for gap_lo, gap_hi in self.gaps]
        return sorted((a, b) for a, b in ranges if a <= b)

    def received(self):
        """How many distinct sequence numbers were received."""
        return self.count_in(self.first, self.last)


class Membership:
    """One connection of one client to the room: from its welcome to its end."""

    __slots__ = ("id", "role", "welcomed", "ended", "how", "close", "tracks", "note")

    def __init__(self, client_id, role, welcomed):
        self.id = client_id  # the server's id for this connection, from the welcome
        self.role = role
        self.welcomed = welcomed  # time.time() when the welcome arrived
        self.ended = None  # time.time() when it ended, or left (its window's end)
        self.how = None  # "server" (closed by it), "left" (we did), "client-error", "open"
        self.close = None  # how the connection ended, for the notes
        self.tracks = {}  # sender key -> Track
        self.note = ""  # for the log: when it paused


class Soak:
    """One server's soak: the clients, the senders' log and the bookkeeping."""

    def __init__(self, server, args, seed):
        self.server = server
        self.args = args
        self.rng = random.Random(seed)
        # step05 and step06 welcome a newcomer with the last messages: not here, where
        # a client that comes back would count them twice.
        history = "?history=0" if server.name in ("step05", "step06") else ""
        self.url = server.ws_url + "/chat" + history
        self.sent = {}  # sender key -> send times (time.time()), indexed by sequence number
        self.sender_dropped = set()  # keys whose connection the server closed
        self.memberships = []
        self.histogram = [0] * HISTOGRAM_BUCKETS
        self.late = []  # latencies past the histogram, in ms
        self.errors = Counter()  # surprises: error events, failed joins...
        self.closes = Counter()  # how connections the server closed ended
        self.open = {}  # membership -> its connection, while open
        self.start = None  # time.time() when the senders start
        self.stop = None  # time.time() when they stop
        self.frozen = False  # once the verdict's data is taken: receive nothing more
        self.rss_warm = None
        self.timings = {}
        self.suspects = []  # memberships the server did not close that missed messages
        self.missing_messages = Counter()  # "key #seq" -> how many of those missed it
        self.rss = []  # (seconds since the start, MiB) every few seconds

    # ---- Joining and receiving

    async def join(self, role):
        """Open one connection and wait for its welcome; return (ws, membership)."""
        small = role == "pauser"
        sock = None
        if small:
            # Set before connect(): the window the server sees is this small one.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PAUSE_RCVBUF)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
                    sock, ("127.0.0.1", self.server.port)), OPEN_TIMEOUT)
            except BaseException:
                sock.close()
                raise
        # The client answers the server's pings by itself, and pings too; it never gives
        # up on a pong (ping_timeout=None): whatever ends a connection is the server.
        ws = await connect(self.url, sock=sock, open_timeout=OPEN_TIMEOUT,
                           close_timeout=CLOSE_TIMEOUT, ping_timeout=None,
                           max_queue=PAUSE_MAX_QUEUE if small else 16,
                           compression=None, proxy=None,
                           additional_headers=self.server.headers)  # step06's login
        try:
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
                if event.get("type") == "welcome":
                    break
                self.errors[f"{event.get('type')} before the welcome"] += 1
        except BaseException:
            ws.transport.abort()
            raise
        if self.frozen:
            # Everyone is leaving: this one came too late to count.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)
            ws.transport.abort()
            return None
        membership = Membership(event.get("id"), role, time.time())
        # Two connections in the room with one id: the server can tell them apart no more.
        twins = [other for other in self.open if other.id == membership.id]
        if twins:
            self.errors["id given to two open connections"] += 1
            log(f"the server gave id {membership.id} to a {role} while a {twins[0].role} "
                f"welcomed {twins[0].welcomed - time.time():+.1f} s ago still has it")
        self.memberships.append(membership)
        self.open[membership] = ws
        return ws, membership

    def receive(self, membership, raw):
        """Check one received message against the senders' log."""
        if self.frozen:
            return
        event = json.loads(raw)
        kind = event.get("type")
        if kind == "message":
            now = time.time()
            _, key, seq, stamp = event["text"].split(" ")
            seq = int(seq)
            track = membership.tracks.get(key)
            if track is None:
                membership.tracks[key] = Track(seq)
            else:
                track.add(seq)
            # A client that paused gets its messages late on purpose: not in the latency.
            if membership.role != "pauser":
                latency = (now - float(stamp)) * 1000
                bucket = int(latency / HISTOGRAM_STEP)
                if bucket < HISTOGRAM_BUCKETS:
                    self.histogram[max(bucket, 0)] += 1
                else:
                    self.late.append(latency)
        elif kind not in ("join", "leave"):
            self.errors[f"{kind} event"] += 1

    def ended(self, membership, ws, how=None):
        """Record the end of a membership: by the server, unless we began it."""
        self.open.pop(membership, None)
        if membership.how is not None:  # "left" or "open": we said why already
            return
        membership.ended = time.time()
        sent, rcvd = ws.protocol.close_sent, ws.protocol.close_rcvd
        if how is None:
            # We sent a close frame first without being asked: our client failed it.
            how = "client-error" if sent is not None and rcvd is None else "server"
        membership.how = how
        membership.close = f"{rcvd.code} {rcvd.reason}".strip() if rcvd else "no close frame"
        self.closes[membership.close] += 1

    async def read(self, ws, membership, until=None):
        """Receive until the connection ends, or (with until) until that time.time()."""
        try:
            if until is None:
                while True:
                    self.receive(membership, await ws.recv())
            while (left := until - time.time()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    # Canceling recv() loses nothing: websockets keeps the message.
                    self.receive(membership, await asyncio.wait_for(ws.recv(), left))
            return True
        except ConnectionClosed:
            self.ended(membership, ws)
            return False
        except Exception as error:  # a bug of ours must not look like a deaf server
            log(f"a client failed reading: {error!r}")
            self.errors[f"client failed: {type(error).__name__}"] += 1
            self.ended(membership, ws, "client-error")
            ws.transport.abort()
            return False

    def task_done(self, task):
        """Report a client task that failed: that is a bug of this tool."""
        if not task.cancelled() and task.exception() is not None:
            log(f"a client task failed: {task.exception()!r}")
            self.errors[f"client task failed: {type(task.exception()).__name__}"] += 1

    # ---- The expected messages

    def caps(self):
        """For each sender the server dropped: the last message anyone got from it."""
        # What it sent after that may never have reached the server: nobody owes it.
        caps = dict.fromkeys(self.sender_dropped, -1)
        for membership in self.memberships:
            for key in self.sender_dropped & membership.tracks.keys():
                caps[key] = max(caps[key], membership.tracks[key].last)
        return caps

    def window(self, key, start, end, caps):
        """The sequence numbers of key sent after start and before end: (lo, hi)."""
        stamps = self.sent[key]
        lo = bisect_right(stamps, start)
        hi = min(bisect_left(stamps, end) - 1, caps.get(key, math.inf))
        return lo, hi

    def has_all_until(self, membership, end, caps):
        """True once membership got, from every sender, the last message sent before end."""
        for key in list(self.sent):
            lo, hi = self.window(key, membership.welcomed, end, caps)
            track = membership.tracks.get(key)
            if hi >= lo and (track is None or track.last < hi):
                return False
        return True

    # ---- The clients

    def roles(self):
        """Each client's role: the senders first, then pausers and churners at random."""
        count = self.args.clients
        senders = min(SENDERS, count)
        others = list(range(senders, count))
        self.rng.shuffle(others)
        pausers = round(count * self.args.pause_fraction)
        churners = max(1, round(count * CHURN_FRACTION)) if count > senders + pausers else 0
        roles = ["plain"] * count
        for index in range(senders):
            roles[index] = "sender"
        for index in others[:pausers]:
            roles[index] = "pauser"
        for index in others[pausers:pausers + churners]:
            roles[index] = "churner"
        return roles

    async def fill(self, roles, deadline):
        """Connect every client, CONNECT_BATCH handshakes at a time; return their connections."""
        joined = [None] * len(roles)
        for attempt in range(CONNECT_ATTEMPTS):
            waiting = [index for index, pair in enumerate(joined) if pair is None]
            for first in range(0, len(waiting), CONNECT_BATCH):
                batch = waiting[first:first + CONNECT_BATCH]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the room did not fill in {CONNECT_BUDGET} s")
                results = await asyncio.wait_for(asyncio.gather(
                    *(self.join(roles[index]) for index in batch), return_exceptions=True), left)
                for index, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        self.errors[f"join failed: {type(result).__name__}"] += 1
                    else:
                        joined[index] = result
                        ws, membership = result
                        # Nobody reads yet: read, so the joins of the others flow.
                        self.reading[index] = asyncio.create_task(self.read(ws, membership))
            if all(joined):
                break
            log(f"{joined.count(None)} clients not in after attempt {attempt + 1}")
        if not all(joined):
            raise RuntimeError(f"{joined.count(None)} clients could not join")
        return joined

    async def rejoin(self, role):
        """Join again until it works or the senders stop; None then."""
        while time.time() < self.stop and not self.frozen:
            try:
                return await self.join(role)
            except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError,
                    ValueError) as error:
                self.errors[f"rejoin failed: {type(error).__name__}"] += 1
                await asyncio.sleep(REJOIN_DELAY)
        return None

    async def plain(self, pair, reader, role="plain"):
        """Read; join again whenever the server closes the connection."""
        ws, membership = pair
        while True:
            if reader is None:
                await self.read(ws, membership)
            else:
                await reader
                reader = None
            await asyncio.sleep(REJOIN_DELAY)
            if time.time() >= self.stop or (pair := await self.rejoin(role)) is None:
                return
            ws, membership = pair

    async def pauser(self, pair, reader):
        """Read; once, stop reading for a while; join again when closed."""
        # The one pause: 1 to 60 s, clamped to the run, starting at random within it.
        run = self.stop - self.start
        length = self.rng.uniform(min(PAUSE_SECONDS[0], run), min(PAUSE_SECONDS[1], run))
        pause_at = self.start + self.rng.uniform(0, run - length)
        ws, membership = pair
        reader.cancel()  # this client reads on its own schedule
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        membership.note = (f" (pause {pause_at - self.start:+.1f} s"
                           f" to {pause_at + length - self.start:+.1f} s)")
        if membership.how is None and await self.read(ws, membership, until=pause_at):
            # Not reading at all: websockets stops reading the socket (max_queue), the
            # small receive buffer fills, and the server's sends to us block.
            await asyncio.sleep(max(0.0, pause_at + length - time.time()))
        await self.plain((ws, membership), None, "pauser")

    async def churner(self, pair, reader):
        """Stay a while, leave, join again; until the senders stop."""
        ws, membership = pair
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        while True:
            stay_until = time.time() + self.rng.uniform(*CHURN_STAY)
            if membership.how is None and await self.read(ws, membership, until=stay_until):
                if stay_until < self.stop:
                    await self.leave(ws, membership)
            if time.time() >= self.stop:
                if membership.how is None:
                    await self.read(ws, membership)  # to the end, as the others
                return
            await asyncio.sleep(self.rng.uniform(0.1, 1) if membership.how == "left"
                                else REJOIN_DELAY)
            if (pair := await self.rejoin("churner")) is None:
                return
            ws, membership = pair

    async def leave(self, ws, membership):
        """Leave now: first receive what was sent before, then close."""
        leaving = time.time()
        deadline = leaving + LEAVE_DRAIN_TIMEOUT
        while not self.has_all_until(membership, leaving, self.caps()):
            if time.time() >= deadline or not await self.read(ws, membership,
                                                             until=time.time() + 0.1):
                break
        if membership.how is not None:
            return  # the server closed it first
        membership.how, membership.ended = "left", leaving
        self.open.pop(membership, None)
        # Keep reading while the close handshake runs, or a full queue would stall it.
        closing = asyncio.create_task(ws.close())
        with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
            await asyncio.wait_for(self.read(ws, membership), CLOSE_TIMEOUT * 2)
        closing.cancel()
        ws.transport.abort()

    async def sender(self, index, pair, reader):
        """Send this sender's share of the rate, reading meanwhile; a new key per connection."""
        ws, membership = pair
        connection = 0
        seq = 0
        key = f"s{index}c{connection}"
        self.sent[key] = []
        period = self.args.senders_count / self.args.rate
        next_send = self.start + index / self.args.rate
        try:
            while (now := time.time()) < self.stop:
                if reader.done():  # the server closed this sender's connection
                    self.sender_dropped.add(key)
                    await asyncio.sleep(REJOIN_DELAY)
                    if (pair := await self.rejoin("sender")) is None:
                        return
                    ws, membership = pair
                    reader = asyncio.create_task(self.read(ws, membership))
                    connection += 1
                    seq = 0
                    key = f"s{index}c{connection}"
                    self.sent[key] = []
                    continue
                if next_send > now:
                    await asyncio.sleep(min(next_send, self.stop) - now)
                    continue
                next_send += period
                stamp = time.time()
                self.sent[key].append(stamp)
                try:
                    await asyncio.wait_for(ws.send(f"soak {key} {seq} {stamp:.6f}"), SEND_TIMEOUT)
                except (ConnectionClosed, asyncio.TimeoutError):
                    self.errors["a send failed"] += 1
                seq += 1
            await reader  # to the end, as the others
        finally:
            reader.cancel()

    # ---- The run

    async def run(self, deadline):
        """Fill the room, send for --minutes, drain and freeze the verdict's data; then close."""
        roles = self.roles()
        self.reading = {}
        tasks = []
        try:
            began = time.monotonic()
            joined = await self.fill(roles, began + CONNECT_BUDGET)
            self.timings["connect"] = time.monotonic() - began
            log(f"{len(roles)} clients joined in {self.timings['connect']:.1f} s")

            run_seconds = self.args.minutes * 60
            self.start = time.time() + 0.2
            self.stop = self.start + run_seconds
            cpu, wall = time.process_time(), time.monotonic()
            for index, (role, pair) in enumerate(zip(roles, joined, strict=True)):
                reader = self.reading[index]
                if role == "sender":
                    task = self.sender(index, pair, reader)
                elif role == "pauser":
                    task = self.pauser(pair, reader)
                elif role == "churner":
                    task = self.churner(pair, reader)
                else:
                    task = self.plain(pair, reader)
                tasks.append(asyncio.create_task(task))
                tasks[-1].add_done_callback(self.task_done)

            await asyncio.sleep(min(WARMUP, run_seconds / 2))
            pid = serving_pid(self.server)
            self.rss_warm = pid and rss_mib(pid)
            log(f"warm: RSS {self.rss_warm or 0:.1f} MiB; "
                f"{len(self.open)} open, {sum(map(len, self.sent.values()))} sent")
            while (left := self.stop - time.time()) > 0:
                await asyncio.sleep(min(left, RSS_EVERY))
                self.rss.append((time.time() - self.start, pid and rss_mib(pid)))
            self.timings["cpu"] = (time.process_time() - cpu) / (time.monotonic() - wall)
            self.timings["run"] = time.monotonic() - wall

            # The senders have stopped: give what is on its way DRAIN_TIMEOUT to arrive.
            drained = time.monotonic()
            while time.monotonic() - drained < DRAIN_TIMEOUT:
                caps = self.caps()
                if all(self.has_all_until(membership, math.inf, caps)
                       for membership in list(self.open)):
                    break
                await asyncio.sleep(0.2)
            self.timings["drain"] = time.monotonic() - drained
            # The verdict's data: what each still-open membership has now.
            self.frozen = True
            for membership in list(self.open):
                membership.how, membership.ended = "open", math.inf
        finally:
            self.frozen = True
            await self.close_all(tasks + list(self.reading.values()), deadline)

    async def close_all(self, tasks, deadline):
        """Everyone leaves, LEAVE_BATCH at a time, until deadline; then stop every task."""
        closing = time.monotonic()
        sockets = list(self.open.values())
        self.open.clear()
        end = min(closing + FINAL_CLOSE_TIMEOUT, deadline)
        # In batches, as they came: all at once, each leave would go to all the others
        # at the same moment, a burst the server's memory would keep the mark of.
        unfinished = set()
        for first in range(0, len(sockets), LEAVE_BATCH):
            if (left := end - time.monotonic()) <= 0:
                break  # out of time: the rest just hang up, below
            batch = sockets[first:first + LEAVE_BATCH]
            _, pending = await asyncio.wait(
                [asyncio.create_task(ws.close()) for ws in batch], timeout=left)
            unfinished |= pending
        for task in [*unfinished, *tasks]:
            task.cancel()
        if tasks or unfinished:
            await asyncio.wait([*tasks, *unfinished], timeout=CLOSE_TIMEOUT)
        for ws in sockets:
            ws.transport.abort()
        self.timings["close"] = time.monotonic() - closing

    def verdict(self):
        """Count, for every membership, what it got of what was sent in its window."""
        caps = self.caps()
        counts = Counter()
        for membership in self.memberships:
            # Not ended, nor frozen open (it joined as everyone left): it owes all the same.
            end = math.inf if membership.ended is None else membership.ended
            missing = []  # (key, lo, hi): ranges of messages it should have had
            for key in self.sent:
                lo, hi = self.window(key, membership.welcomed, end, caps)
                if hi < lo:
                    continue
                track = membership.tracks.get(key)
                gone = track.missing_in(lo, hi) if track else [(lo, hi)]
                missing += [(key, a, b) for a, b in gone]
            count = sum(b - a + 1 for _, a, b in missing)
            for track in membership.tracks.values():
                counts["delivered"] += track.received()
                counts["duplicated"] += track.duplicates
                counts["reordered"] += track.reordered
            if membership.how == "server":
                counts["closed-and-rejoined"] += 1
                counts["missed while dropped"] += count
                continue
            # A client the server did not close must have had everything.
            counts["lost"] += count
            for key, a, b in missing:
                for seq in range(a, min(b, a + 2) + 1):
                    self.missing_messages[f"{key} #{seq}"] += 1
            if count and len(self.suspects) < 10:
                self.suspects.append(self.describe(membership, missing))
            if count and membership.how == "open":
                counts["open-but-deaf"] += 1
                if self.stopped_hearing(membership, end, caps):
                    counts["stopped hearing"] += 1
            if count and membership.how == "client-error":
                counts["client errors"] += 1
        counts["sent"] = sum(map(len, self.sent.values()))
        return counts

    def stopped_hearing(self, membership, end, caps):
        """True if the last message membership got was sent over 1 s before its window's last."""
        # Else it only missed messages in between (or the last of a dropped sender).
        last_sent = max((self.sent[key][hi] for key in self.sent
                         for lo, hi in [self.window(key, membership.welcomed, end, caps)]
                         if hi >= lo), default=-math.inf)
        last_heard = max((self.sent[key][track.last]
                          for key, track in membership.tracks.items()), default=-math.inf)
        return last_sent - last_heard > 1

    def describe(self, membership, missing):
        """One membership, for the log: who, when, how it ended, what it got."""
        def at(moment):
            return "-" if moment is None or math.isinf(moment) else f"{moment - self.start:+.1f} s"
        got = {key: f"{track.first}..{track.last} ({track.received()})"
               for key, track in sorted(membership.tracks.items())}
        gone = ", ".join(f"{key} #{a}" + (f"-{b}" if b > a else "")
                         for key, a, b in missing[:6])
        return (f"{membership.role}{membership.note} id {membership.id} "
                f"welcomed {at(membership.welcomed)}, "
                f"ended {at(membership.ended)} ({membership.how}, {membership.close}), "
                f"missing {gone}; got {got}")

    def percentile(self, fraction):
        """The latency below which fraction of the deliveries arrived, in ms."""
        total = sum(self.histogram) + len(self.late)
        if not total:
            return math.nan
        rank = math.ceil(fraction * total)
        seen = 0
        for bucket, count in enumerate(self.histogram):
            seen += count
            if seen >= rank:
                return (bucket + 1) * HISTOGRAM_STEP
        return sorted(self.late)[rank - seen - 1]


def start_server(name, ping=None):
    """Start one server (and its redis-server); return (server, redis or None)."""
    cwd, command = SERVERS[name]
    # Every hardened server reads these (protections.py); without them, 20 s each.
    env = {"PING_INTERVAL": str(ping), "PING_TIMEOUT": str(ping)} if ping else {}
    redis = None
    if name == "step02-gunicorn":
        # gunicorn's gevent worker serves 1,000 connections by default: as `make step02-gunicorn`.
        command = [*command, "--worker-connections", "10000"]
    if name == "step04":
        env["REDIS_URL"] = ""
    if name in ("step04-redis", "step05", "step06"):
        redis = RedisServer().start()
        env["REDIS_URL"] = redis.url
    if name == "step06":
        env.update(STEP06_UNLIMITED)  # one user, 1,000 connections: no limits here
    try:
        server = Server(name, cwd, command, env).start()
        return (authenticate(server) if name == "step06" else server), redis
    except BaseException:
        if redis:
            redis.stop()
        raise


def wait_empty(server, deadline):
    """Wait until the server's room is empty; its count of clients then."""
    count = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            count = server.health()["chat_clients"]
            if count == 0:
                return 0
        time.sleep(0.2)
    return count


def soak(name, args, seed):
    """Soak one server; return its table row and its problems."""
    began = time.monotonic()
    deadline = began + args.minutes * 60 + SLACK
    problems = []
    server, redis = start_server(name, args.ping)
    state = Soak(server, args, seed)
    try:
        # Keep time at the end for the room to empty, the memory reading and the stop.
        # run() keeps to run_deadline by itself; wait_for is the safety net.
        run_deadline = deadline - AFTER_RUN
        try:
            asyncio.run(asyncio.wait_for(state.run(run_deadline),
                                         run_deadline - time.monotonic() + 2 * CLOSE_TIMEOUT))
        except (asyncio.TimeoutError, TimeoutError, RuntimeError, OSError) as error:
            problems.append(f"did not finish: {type(error).__name__}: {error}")
        empty = wait_empty(server, min(deadline - STOP_TIMEOUT - 2,
                                       time.monotonic() + EMPTY_TIMEOUT))
        if empty != 0:
            problems.append(f"{empty} chat clients still in the room after all left")
        time.sleep(1)
        pid = serving_pid(server)
        rss_end = pid and rss_mib(pid)
        if server.process.poll() is not None:
            problems.append(f"the server died (exit {server.process.returncode})")
        if redis and not redis.ping():
            problems.append("redis-server died")
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.stop(timeout=STOP_TIMEOUT)  # then SIGKILL
        if redis:
            redis.stop()
    state.timings["total"] = time.monotonic() - began

    counts = state.verdict()
    for column in ("lost", "duplicated", "open-but-deaf", "reordered"):
        if counts[column]:
            problems.append(f"{counts[column]} {column}")
    failures = sum(count for error, count in state.errors.items() if "failed:" in error
                   and not error.startswith(("join failed", "rejoin failed")))
    if failures:
        problems.append(f"{failures} client tasks failed (a bug of tools/soak.py)")
    if counts["client errors"]:
        problems.append(f"{counts['client errors']} connections failed by the client")
    rss_warm = state.rss_warm
    if not rss_warm or not rss_end:
        problems.append("no memory reading")
    elif rss_end > rss_warm * (1 + MEMORY_GROWTH):
        problems.append(f"memory grew {rss_end / rss_warm - 1:.0%} (bound {MEMORY_GROWTH:.0%})")
    if state.errors:
        log(f"{name}: surprises: {dict(state.errors)}")
    log(f"{name}: RSS during the run: "
        + ", ".join(f"{t:.0f}s {m:.1f}" for t, m in state.rss if m))
    for suspect in state.suspects:
        log(f"{name}: {suspect}")
    if state.missing_messages:
        log(f"{name}: most missed (by clients the server did not close): " + ", ".join(
            f"{message} by {count}" for message, count in state.missing_messages.most_common(5)))
    output = server.output()
    if problems or server.process.returncode not in (0, -15, None):
        # What the server said about it: its tracebacks, the first few.
        errors = [line for line in output.splitlines()
                  if any(word in line for word in ("Error", "Exception", "Traceback",
                                                    "unavailable", "failed"))]
        log(f"{name}: exit status {server.process.returncode}; "
            f"{len(errors)} error lines in its log" + "".join(f"\n  {e}" for e in errors[:8]))

    def mib(value):
        return f"{value:.1f}" if value else "-"

    row = [name, args.clients, counts["sent"], counts["delivered"],
           counts["closed-and-rejoined"], counts["lost"], counts["duplicated"],
           counts["open-but-deaf"], f"{state.percentile(0.5):.1f}",
           f"{state.percentile(0.99):.1f}", mib(rss_warm), mib(rss_end)]
    timings = state.timings
    note = (f"{name}: connect {timings.get('connect', math.nan):.1f} s, "
            f"traffic {timings.get('run', math.nan):.1f} s, "
            f"drain {timings.get('drain', math.nan):.1f} s, "
            f"close {timings.get('close', math.nan):.1f} s, total {timings['total']:.1f} s; "
            f"load generator CPU {timings.get('cpu', math.nan):.0%} of a core while sending; "
            f"{counts['missed while dropped']} messages missed by dropped clients; "
            f"{len(state.sender_dropped)} sender connections dropped; "
            f"reordered {counts['reordered']}; "
            f"open-but-deaf that stopped hearing: {counts['stopped hearing']} (the others "
            f"missed messages in between); server closes: {dict(state.closes) or 'none'}")
    return row, note, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5, help="of traffic per server (5)")
    parser.add_argument("--clients", type=int, default=1000, help="chat clients (1000)")
    parser.add_argument("--rate", type=float, default=15,
                        help="chat messages per second, across the room (15)")
    parser.add_argument("--pause-fraction", type=float, default=0.05,
                        help="of the clients that pause their reading once (0.05)")
    parser.add_argument("--servers", nargs="+", default=HARDENED_SERVERS,
                        choices=HARDENED_SERVERS, metavar="SERVER",
                        help=f"among {', '.join(HARDENED_SERVERS)} (all)")
    parser.add_argument("--seed", type=int, default=1, help="for the random choices (1)")
    parser.add_argument("--ping", type=float, metavar="SECONDS",
                        help="the servers' ping interval and timeout (theirs: 20; --quick: 5, "
                             "so that a pause in half a minute can outlast them)")
    parser.add_argument("--quick", action="store_true",
                        help="0.5 minute and 200 clients, for CI")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.clients = 0.5, 200
        args.ping = args.ping or 5
    if args.clients < 1 or args.rate <= 0 or args.minutes <= 0:
        parser.error("--clients, --rate and --minutes must be positive")
    args.senders_count = min(SENDERS, args.clients)

    limit = raise_fd_limit()
    if limit < args.clients + 100:
        parser.error(f"{args.clients} clients need more open files than the limit, {limit}")
    print(f"Soak: {args.clients} clients, {args.rate:g} messages/s across the room from "
          f"{args.senders_count} senders, {args.minutes:g} minutes per server, "
          f"{args.pause_fraction:.0%} pausing, {CHURN_FRACTION:.0%} leaving and joining again; "
          f"server pings every {args.ping or 20:g} s.", flush=True)

    rows, notes, failed = [], [], []
    for number, name in enumerate(args.servers):
        if name in ("step04-redis", "step05", "step06") and REDIS_SERVER is None:
            notes.append(f"{name}: SKIPPED, no redis-server (apt-get install redis-server)")
            log(notes[-1])
            continue
        log(f"{name}: starting")
        row, note, problems = soak(name, args, args.seed + number)
        rows.append(row)
        notes.append(note + (f"; FAILED: {'; '.join(problems)}" if problems else ""))
        log(notes[-1])
        if problems:
            failed.append(name)

    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()
    for note in notes:
        print(f"- {note}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
