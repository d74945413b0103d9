"""gevent or ASGI? The same WebSocket load against step02, step03 and three references.

    python bench/run.py           # the full run, about 6.5 minutes; draws docs/bench.png
    python bench/run.py --quick   # tiny loads in well under a minute: checks that it runs

Every server is a subprocess on a free loopback port, started afresh for each workload.
The load generator is a few asyncio processes: small messages are framed by hand
(SmallEcho), everything else goes through the `websockets` client.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
STARTUP_TIMEOUT = 20  # seconds for a server to accept a WebSocket
TICKS = os.sysconf("SC_CLK_TCK")

# Each server: its folder and command line. gunicorn's gevent worker serves at most
# --worker-connections (1,000 by default) at once, too few for the idle workload.
SERVERS = {
    "step02": ("step02_ws_gevent", [PYTHON, "wsgi.py", "--port", "{port}"]),
    "step02-gunicorn": ("step02_ws_gevent", [
        str(BIN / "gunicorn"), "--worker-class", "protections.Worker", "--worker-connections",
        "20000", "--bind", "127.0.0.1:{port}", "--graceful-timeout", "3", "app:app"]),
    "step02-simple": ("step02_ws_gevent", [PYTHON, "wsgi_simple.py", "--port", "{port}"]),
    "step03": ("step03_ws_asgi", [PYTHON, "server.py", "--port", "{port}"]),
    # step03 on asyncio's own loop: what uvloop (step03's default) is worth.
    "step03-asyncio": ("step03_ws_asgi", [PYTHON, "server.py", "--port", "{port}",
                                          "--loop", "asyncio"]),
    # step03 with compression accepted, and offered by the client as browsers do.
    "step03-deflate": ("step03_ws_asgi", [PYTHON, "server.py", "--port", "{port}",
                                          "--ws-per-message-deflate", "true"]),
    # bare-asgi's two endpoints in Falcon's WebSocket API: Falcon's cost, apart from step03's.
    "falcon-asgi": ("bench", [PYTHON, "falcon_asgi.py", "--port", "{port}"]),
    "bare-asgi": ("bench", [PYTHON, "bare_asgi.py", "--port", "{port}"]),
    "websockets": ("bench", [PYTHON, "websockets_echo.py", "--port", "{port}"]),
}

# What each workload does, for a full run and for --quick.
FULL = {"small_conns": 50, "small_seconds": 2, "runs": {"small": 3, "fanout": 2},
        "large_conns": 2, "large_seconds": 3, "warmup": 0.5,
        "idle_conns": 10_000, "fanout_clients": 1_000, "fanout_rounds": 3}
QUICK = {"small_conns": 10, "small_seconds": 0.5, "runs": {"small": 1, "fanout": 1},
         "large_conns": 1, "large_seconds": 0.5, "warmup": 0.2,
         "idle_conns": 200, "fanout_clients": 40, "fanout_rounds": 2}
SMALL_MESSAGE = "x" * 32
LARGE_SIZE = 2**20
CONNECT_CONCURRENCY = 25  # handshakes in flight per client process, below every backlog

# Servers the client offers permessage-deflate to, as browsers do; to the others it offers
# no compression (gevent-websocket has none; step03 would decline, the references accept).
OFFER_DEFLATE = {"step03-deflate"}
CLIENT_OPTIONS = {"compression": None, "ping_interval": None, "max_size": None,
                  "open_timeout": 60, "close_timeout": 2, "proxy": None}


def raise_fd_limit():
    """Allow as many open sockets as the hard limit: 10,000 connections need 10,000 files."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------- load generator
# These run in the client processes, one asyncio loop each, and talk to the
# parent over a pipe: ("ready" | "done" | "error", payload).


class Parent:
    """The pipe to the orchestrating process, readable without blocking the loop."""

    def __init__(self, conn):
        self.conn = conn

    def tell(self, *message):
        self.conn.send(message)

    async def wait(self):
        """Wait for the parent's next instruction while the connections keep working."""
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)


async def open_many(url, count, on_open=None, **options):
    """Open count connections, a few handshakes at a time."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one():
        async with gate:
            ws = await connect(url, **{**CLIENT_OPTIONS, **options})
        if on_open:
            on_open(ws)
        return ws

    return await asyncio.gather(*(one() for _ in range(count)))


async def sleep_until(moment):
    await asyncio.sleep(max(0, moment - time.monotonic()))


async def echo_load(parent, url, count, message):
    """Echo round trips on count connections between two moments the parent picks."""
    connections = await open_many(url, count)
    parent.tell("ready", None)
    warm_from, start, stop = await parent.wait()
    latencies = []

    async def loop(ws):
        await sleep_until(warm_from)  # warm up before measuring
        while (sent := time.monotonic()) < stop:
            await ws.send(message)
            if len(await ws.recv()) != len(message):
                raise RuntimeError("the echo differs from the message")
            if sent >= start:
                latencies.append(time.monotonic() - sent)

    await asyncio.gather(*(loop(ws) for ws in connections))
    parent.tell("done", latencies)
    await asyncio.gather(*(ws.close() for ws in connections))


def client_frame(opcode, payload, compressed=False):
    """One masked client frame of under 126 bytes (a zero mask is valid and costs nothing)."""
    first = 0x80 | (0x40 if compressed else 0) | opcode  # 0x40: RSV1, "compressed"
    return bytes([first, 0x80 | len(payload)]) + bytes(4) + payload


class SmallEcho(asyncio.Protocol):
    """One connection echoing a small text message, framed by hand.

    The `websockets` client spends more CPU per small message than the fastest servers
    do; a frame built once and replies parsed in a few lines keep the load generator
    from being what is measured.
    """

    def __init__(self, host, port, message):
        self.message = message
        self.frame = client_frame(0x1, message)
        # Chromium's offer, when this run offers compression.
        offer = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                 if CLIENT_OPTIONS["compression"] else "")
        self.request = (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        ).encode()
        self.compressor = self.decompressor = None  # set if the server accepts compression
        loop = asyncio.get_running_loop()
        self.opened, self.finished = loop.create_future(), loop.create_future()
        self.buffer, self.handshaken = b"", False
        self.start = self.stop = self.sent = 0.0
        self.latencies = []

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        if not self.handshaken:
            head, found, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not found:
                self.buffer = head
            elif head.startswith(b"HTTP/1.1 101"):
                self.handshaken = True
                if b"permessage-deflate" in head.lower():
                    self.start_compression(head)
                self.opened.set_result(self)
            else:
                self.fail(f"handshake refused: {head[:40]!r}")
            return
        # Servers answer with unmasked frames of under 126 bytes here.
        while len(self.buffer) >= 2 and len(self.buffer) >= 2 + (self.buffer[1] & 0x7F):
            first, length = self.buffer[0], self.buffer[1] & 0x7F
            opcode = first & 0x0F
            payload, self.buffer = self.buffer[2:2 + length], self.buffer[2 + length:]
            if first & 0x40:  # RSV1: a compressed message (RFC 7692 drops the last 4 bytes)
                payload = self.decompressor.decompress(payload + b"\x00\x00\xff\xff")
            if opcode == 0x9:  # ping: answer it, as any client must
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x1 and payload == self.message:
                now = time.monotonic()
                if self.sent >= self.start:
                    self.latencies.append(now - self.sent)
                self.send_next(now)
            else:
                self.fail(f"unexpected frame: opcode {opcode}, {payload[:40]!r}")

    def send_next(self, now):
        """Send the message again, or finish once the measuring window is over."""
        if now >= self.stop:
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self.sent = now
        if self.compressor is None:
            self.transport.write(self.frame)
        else:  # compress each time, as browsers do: the compressor keeps its context
            data = self.compressor.compress(self.message)
            data += self.compressor.flush(zlib.Z_SYNC_FLUSH)
            self.transport.write(client_frame(0x1, data[:-4], compressed=True))

    def start_compression(self, head):
        """Use permessage-deflate as the server accepted it: its window for our messages."""
        bits = re.search(rb"client_max_window_bits=(\d+)", head)
        self.compressor = zlib.compressobj(wbits=-int(bits.group(1)) if bits else -15)
        self.decompressor = zlib.decompressobj(wbits=-15)  # reads any smaller window too

    def fail(self, reason):
        for future in (self.opened, self.finished):
            if not future.done():
                future.set_exception(RuntimeError(reason))
        self.transport.abort()

    def connection_lost(self, error):
        if not self.finished.done():
            self.fail(f"connection lost: {error}")


async def small_load(parent, url, count):
    """Echo round trips of a small text message, through SmallEcho connections."""
    host, port = url.removeprefix("ws://").rstrip("/").split(":")
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one():
        async with gate:
            _, echo = await loop.create_connection(
                lambda: SmallEcho(host, port, SMALL_MESSAGE.encode()), host, int(port))
            return await asyncio.wait_for(echo.opened, 60)

    connections = await asyncio.gather(*(one() for _ in range(count)))
    parent.tell("ready", None)
    warm_from, start, stop = await parent.wait()
    await sleep_until(warm_from)  # warm up before measuring
    for echo in connections:
        echo.start, echo.stop = start, stop
        echo.send_next(time.monotonic())
    await asyncio.gather(*(echo.finished for echo in connections))
    parent.tell("done", [latency for echo in connections for latency in echo.latencies])
    for echo in connections:
        echo.transport.write(client_frame(0x8, (1000).to_bytes(2, "big")))
        echo.transport.close()


async def large_load(parent, url, count):
    await echo_load(parent, url, count, os.urandom(LARGE_SIZE))


async def idle_load(parent, url, count):
    """Open a few connections, then the rest, and hold them until the parent has looked."""
    warm = await open_many(url, max(1, count // 20))
    parent.tell("ready", len(warm))
    await parent.wait()
    rest = await open_many(url, count - len(warm))
    parent.tell("ready", len(rest))
    await parent.wait()
    for ws in warm + rest:
        ws.transport.abort()


async def fanout_load(parent, url, count, total):
    """Join /chat, keep reading everything, and time when each round's message lands."""
    from websockets.exceptions import ConnectionClosedError

    full = asyncio.Event()
    arrivals = {}  # message text -> [how many clients have it, when the last one got it]
    landed = {}  # message text -> event set once every client here has it
    filled = dropped = 0
    full_room = f'"count": {total}}}'  # json.dumps of the event announcing the last join

    async def read(ws):
        nonlocal filled, dropped
        seen_full = False
        try:
            async for raw in ws:  # ends quietly or raises ConnectionClosedError
                # Look for text before parsing: there are n * n / 2 join events.
                if not seen_full and full_room in raw:
                    seen_full = True
                    filled += 1
                    if filled == count:
                        full.set()
                if '"type": "message"' in raw:
                    event = json.loads(raw)
                    arrival = arrivals.setdefault(event["text"], [0, 0])
                    arrival[0] += 1
                    arrival[1] = time.monotonic()
                    if arrival[0] == count:
                        landed.setdefault(event["text"], asyncio.Event()).set()
        except ConnectionClosedError:
            pass
        finally:
            dropped += 1

    readers = []
    connections = await open_many(
        url + "chat", count, max_queue=None,
        on_open=lambda ws: readers.append(asyncio.create_task(read(ws))))
    await asyncio.wait_for(full.wait(), 120)  # every join has reached every client here
    parent.tell("ready", None)
    while (order := await parent.wait())[0] == "round":
        _, text, is_sender = order
        sent = time.monotonic()
        if is_sender:
            await connections[0].send(text)
        try:
            await asyncio.wait_for(landed.setdefault(text, asyncio.Event()).wait(), 30)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{dropped} chat clients were dropped") from None
        parent.tell("done", (sent if is_sender else None, arrivals[text][1]))
    for ws in connections:
        ws.transport.abort()


CLIENT_WORKLOADS = {"small": small_load, "large": large_load, "idle": idle_load,
                    "fanout": fanout_load}


def client_process(conn, workload, url, count, *extra, deflate=False):
    """One load-generator process: run its share of a workload, report errors to the parent."""
    raise_fd_limit()
    if deflate:
        CLIENT_OPTIONS["compression"] = "deflate"  # this process offers it on every connection
    try:
        asyncio.run(CLIENT_WORKLOADS[workload](Parent(conn), url, count, *extra))
    except Exception as error:  # noqa: BLE001 - the parent prints it
        conn.send(("error", f"{type(error).__name__}: {error}"))


# ---------------------------------------------------------------- orchestration


def free_port():
    """Ask the kernel for a loopback port nobody is using."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_preexec():
    """In the server process: a session of its own and room for 10,000 sockets."""
    os.setsid()
    raise_fd_limit()


def process_tree(pid):
    """The pid and all its descendants (gunicorn's master and its worker)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The fields after the command name, which may contain spaces.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except OSError:
                continue
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def cpu_seconds(pids):
    """User plus system CPU time of these processes."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / TICKS


def rss_kib(pids):
    """Resident memory of these processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Server:
    """One server as a subprocess, killed with its whole process group."""

    def __init__(self, name):
        folder, command = SERVERS[name]
        self.name = name
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.command = [part.format(port=self.port) for part in command]
        self.cwd = ROOT / folder
        self.deflate = name in OFFER_DEFLATE
        self.log = tempfile.TemporaryFile()
        self.process = None

    def __enter__(self):
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=server_preexec)
        self.wait_ready()
        return self

    def wait_ready(self):
        """Return once a WebSocket echo works; fail if the process dies first."""
        from websockets.sync.client import connect

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            try:
                with connect(self.url, open_timeout=2, proxy=None) as ws:
                    ws.send("ready?")
                    ws.recv(timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not accept a WebSocket in {STARTUP_TIMEOUT} s")

    def pids(self):
        return process_tree(self.process.pid)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __exit__(self, *exc):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


class Clients:
    """Load-generator processes, each with a pipe to this one."""

    def __init__(self, workload, server, counts, *extra):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for count in counts:
            ours, theirs = context.Pipe()
            process = context.Process(target=client_process, daemon=True,
                                      args=(theirs, workload, server.url, count, *extra),
                                      kwargs={"deflate": server.deflate})
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def gather(self, expected, timeout):
        """Wait for each process's next report; raise if one fails or is late."""
        deadline = time.monotonic() + timeout
        results = []
        for pipe in self.pipes:
            if not pipe.poll(max(0, deadline - time.monotonic())):
                raise TimeoutError(f"the load generator did not report {expected!r} in time")
            tag, payload = pipe.recv()
            if tag != expected:
                raise RuntimeError(payload)
            results.append(payload)
        return results

    def tell(self, message, to=None):
        for pipe in self.pipes if to is None else [self.pipes[to]]:
            pipe.send(message)

    def pids(self):
        return [process.pid for process in self.processes]

    def __enter__(self):
        return self

    def __exit__(self, error_type, *exc):
        for process in self.processes:
            # After an error a process may be waiting for us: do not wait for it.
            process.join(timeout=0 if error_type else 5)
            if process.is_alive():
                process.kill()
                process.join()


def split(total, parts):
    """Split total into parts near-equal positive counts."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def run_echo(server, workload, connections, seconds, warmup, procs):
    """Workloads 1 and 2: timed echo round trips; returns rates, latencies and CPU use."""
    with Clients(workload, server, split(connections, procs)) as clients:
        clients.gather("ready", 120)
        warm_from = time.monotonic() + 0.3
        start, stop = warm_from + warmup, warm_from + warmup + seconds
        clients.tell((warm_from, start, stop))
        time.sleep(max(0, start - time.monotonic()))
        server_cpu, client_cpu = cpu_seconds(server.pids()), cpu_seconds(clients.pids())
        time.sleep(max(0, stop - time.monotonic()))
        server_cpu = cpu_seconds(server.pids()) - server_cpu
        client_cpu = cpu_seconds(clients.pids()) - client_cpu
        latencies = sorted(sum(clients.gather("done", seconds + 60), []))
    if not latencies:
        raise RuntimeError("no round trip completed")
    return {
        "rate": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "server_cpu": 100 * server_cpu / seconds,
        "client_cpu": 100 * client_cpu / seconds,
        # CPU time per message: steadier than a rate on a machine others share.
        "server_cpu_us": 1e6 * server_cpu / len(latencies),
    }


def run_small(server, profile, procs):
    return run_echo(server, "small", profile["small_conns"], profile["small_seconds"],
                    profile["warmup"], procs)


def run_large(server, profile, procs):
    result = run_echo(server, "large", profile["large_conns"], profile["large_seconds"],
                      profile["warmup"], procs)
    result["mib_s"] = result.pop("rate") * LARGE_SIZE / 2**20
    result["server_cpu_ms"] = result.pop("server_cpu_us") / 1000 / (LARGE_SIZE / 2**20)
    return result


def run_idle(server, profile, procs):
    """Workload 3: memory of the server tree per open idle connection."""
    total = profile["idle_conns"]
    with Clients("idle", server, split(total, procs)) as clients:
        warm = sum(clients.gather("ready", 60))
        time.sleep(0.5)
        before = rss_kib(server.pids())
        clients.tell("go")
        rest = sum(clients.gather("ready", 300))
        time.sleep(1)  # let the server finish what each handshake started
        after = rss_kib(server.pids())
        os.killpg(server.process.pid, signal.SIGKILL)  # faster than closing 10,000 sockets
        clients.tell("done")
    return {"connections": warm + rest, "kib_per_conn": (after - before) / rest,
            "rss_mib": after / 1024}


def run_fanout(server, profile, procs):
    """Workload 4: time from one chat message to its arrival at every connected client."""
    total = profile["fanout_clients"]
    times = []
    with Clients("fanout", server, split(total, procs), total) as clients:
        clients.gather("ready", 180)
        for round_number in range(profile["fanout_rounds"]):
            time.sleep(0.2)
            for index in range(len(clients.pipes)):
                clients.tell(("round", f"round {round_number}", index == 0), to=index)
            reports = clients.gather("done", 60)
            times.append(max(last for _, last in reports) - reports[0][0])
        os.killpg(server.process.pid, signal.SIGKILL)  # skip 1,000 leave broadcasts
        clients.tell(("stop",))
    return {"median_ms": 1000 * statistics.median(times), "worst_ms": 1000 * max(times)}


WORKLOADS = {
    "small": ("1. small messages", run_small),
    "large": ("2. 1 MiB messages", run_large),
    "idle": ("3. idle connections", run_idle),
    "fanout": ("4. chat fan-out", run_fanout),
}


def better(result, best):
    """Whether a result beats the best so far: a higher rate, or a faster fan-out."""
    if best is None or "error" in best:
        return True
    if "error" in result:
        return False
    if "median_ms" in result:
        return result["median_ms"] < best["median_ms"]
    return result["rate"] > best["rate"]


def describe(workload, result):
    """One progress line for a result."""
    if "error" in result:
        return "FAILED: " + result["error"].splitlines()[0][:200]
    if workload == "small":
        return (f"{result['rate']:,.0f} msg/s, p50 {result['p50_ms']:.2f} ms, "
                f"p99 {result['p99_ms']:.2f} ms, CPU server {result['server_cpu']:.0f}% "
                f"({result['server_cpu_us']:.1f} µs/msg) clients {result['client_cpu']:.0f}%")
    if workload == "large":
        return (f"{result['mib_s']:,.1f} MiB/s, CPU server {result['server_cpu']:.0f}% "
                f"clients {result['client_cpu']:.0f}%")
    if workload == "idle":
        return (f"{result['kib_per_conn']:.1f} KiB per connection "
                f"({result['connections']:,} open, RSS {result['rss_mib']:.0f} MiB)")
    return f"median {result['median_ms']:.1f} ms, worst {result['worst_ms']:.1f} ms"


def cell(results, workload, name, key, fmt, unit=""):
    """One table cell: the formatted value, "failed" or "-"."""
    result = results.get(workload, {}).get(name)
    if result is None:
        return "-"
    if "error" in result:
        return "failed"
    return format(result[key], fmt) + unit


def ratio(results, workload, key, top, bottom):
    """results[workload][top][key] / ...[bottom][key], or None if either is missing."""
    try:
        return results[workload][top][key] / results[workload][bottom][key]
    except (KeyError, ZeroDivisionError):
        return None


def verdict(value, target, higher_is_better=True):
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def report(results, names, profile, procs):
    """The results as markdown: the machine, one table, the targets."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    small, large = profile["small_conns"], profile["large_conns"]
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{date.today().isoformat()}. Load generator: {procs} asyncio processes (small "
        "messages framed by hand, the rest with the websockets client) on the same cores "
        "as the server.",
        "",
        f"| server | small msg/s ({small} conns) | p50 ms | p99 ms | server CPU | "
        f"server µs CPU / msg | 1 MiB echo MiB/s ({large} conns) | server ms CPU / MiB | "
        f"KiB per idle conn ({profile['idle_conns']:,}) | "
        f"fan-out to {profile['fanout_clients']:,} ms (median) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in names:
        lines.append("| " + " | ".join([
            name,
            cell(results, "small", name, "rate", ",.0f"),
            cell(results, "small", name, "p50_ms", ".2f"),
            cell(results, "small", name, "p99_ms", ".2f"),
            cell(results, "small", name, "server_cpu", ".0f", "%"),
            cell(results, "small", name, "server_cpu_us", ".0f"),
            cell(results, "large", name, "mib_s", ",.1f"),
            cell(results, "large", name, "server_cpu_ms", ".2f"),
            cell(results, "idle", name, "kib_per_conn", ".1f"),
            cell(results, "fanout", name, "median_ms", ".1f"),
        ]) + " |")
    lines += ["", "Targets, as ratios within this run (server CPU time per message moves "
              "less than a rate when others use the machine):", ""]
    for workload, top, bottom, target in [("small", "step03", "bare-asgi", 0.9),
                                          ("large", "step02", "step03", 0.5),
                                          ("large", "step02-gunicorn", "step03", 0.5)]:
        rate, cost = ("rate", "server_cpu_us") if workload == "small" else ("mib_s",
                                                                            "server_cpu_ms")
        by_rate = ratio(results, workload, rate, top, bottom)
        by_cpu = ratio(results, workload, cost, bottom, top)
        if by_rate is not None and by_cpu is not None:
            lines.append(f"- {WORKLOADS[workload][0][3:]}, {top} / {bottom}: {by_rate:.2f} "
                         f"(by CPU per message {by_cpu:.2f}; target >= {target}: "
                         f"{verdict(by_rate, target)})")
    # Lower is better for these: step03's cost over a reference.
    for workload, key, top, bottom, target, what in [
            ("small", "server_cpu_us", "step03", "step02-gunicorn", 1.15, "CPU per message"),
            ("fanout", "median_ms", "step03", "bare-asgi", 1.3, "time to reach every client")]:
        value = ratio(results, workload, key, top, bottom)
        if value is not None:
            lines.append(f"- {WORKLOADS[workload][0][3:]}, {top} / {bottom}, {what}: "
                         f"{value:.2f} (target <= {target}: "
                         f"{verdict(value, target, higher_is_better=False)})")
    for name in names:
        result = results.get("idle", {}).get(name)
        if name in OFFER_DEFLATE or not result or "error" in result:
            continue
        per_conn = result["kib_per_conn"]
        compressed = results["idle"].get(f"{name}-deflate", {}).get("kib_per_conn")
        beside = (f"; {compressed:.1f} with compression negotiated ({name}-deflate)"
                  if compressed else "")
        lines.append(f"- idle memory, {name}: {per_conn:.1f} KiB per connection (target "
                     f"<= 50: {verdict(per_conn, 50, higher_is_better=False)}){beside}")
    # No target: step03's CPU over bare-asgi's, split into Falcon's part and step03's own.
    for top, bottom, what in [("falcon-asgi", "bare-asgi", "what Falcon's WebSocket API costs"),
                              ("step03", "falcon-asgi", "what step03's own code costs")]:
        value = ratio(results, "small", "server_cpu_us", top, bottom)
        if value is not None:
            lines.append(f"- small messages, {top} / {bottom}, CPU per message: {value:.2f} "
                         f"({what})")
    # No target: what uvloop, step03's default event loop, is worth.
    for workload, key in [("small", "server_cpu_us"), ("fanout", "median_ms")]:
        value = ratio(results, workload, key, "step03-asyncio", "step03")
        if value is not None:
            lines.append(f"- {WORKLOADS[workload][0][3:]}, step03 on asyncio's loop / on "
                         f"uvloop, {'CPU per message' if workload == 'small' else 'time'}: "
                         f"{value:.2f}")
    reference = results.get("small", {}).get("websockets")
    if reference and "error" not in reference:
        lines.append(f"- load generator on small messages against websockets: clients "
                     f"{reference['client_cpu']:.0f}% CPU, server "
                     f"{reference['server_cpu']:.0f}% (100% = one core)")
    return "\n".join(lines)


def plot(results, names, path):
    """Draw one bar chart per workload into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = [("small", "rate", "small messages / s (higher is better)"),
              ("large", "mib_s", "1 MiB echo, MiB/s (higher is better)"),
              ("idle", "kib_per_conn", "KiB per idle connection (lower is better)"),
              ("fanout", "median_ms", "chat fan-out, ms (lower is better)")]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    # One colour per family: gevent (step02*), ASGI (step03*), the references.
    colors = [{"step02": "#4c72b0", "step03": "#dd8452"}.get(name.split("-")[0], "#a0a0a0")
              for name in names]
    for axis, (workload, key, title) in zip(axes.flat, panels, strict=True):
        values = [results.get(workload, {}).get(name, {}).get(key, 0) for name in names]
        bars = axis.bar(names, values, color=colors)
        axis.bar_label(bars, fmt="{:,.0f}" if max(values) >= 100 else "{:.1f}", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8, labelrotation=30)
        for label in axis.get_xticklabels():  # each name ends under its own bar
            label.set(horizontalalignment="right", rotation_mode="anchor")
    figure.suptitle("step02 (gevent) and step03 (ASGI) against bare references")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    """Run every workload against every server, then print and plot the results."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny loads: check that it runs")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated, from: " + ", ".join(SERVERS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated, from: " + ", ".join(WORKLOADS))
    parser.add_argument("--client-procs", type=int, default=2,
                        help="load-generator processes (default 2)")
    parser.add_argument("--plot", type=Path,
                        help="where to draw the chart (default docs/bench.png; none with --quick)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--no-backplanes", dest="backplanes", action="store_false",
                        help="skip 5.: step04's pub/sub against step05's stream "
                             "(bench/backplanes.py)")
    args = parser.parse_args()
    profile = dict(QUICK if args.quick else FULL)
    names = args.servers.split(",")
    plot_path = args.plot or (None if args.quick else ROOT / "docs" / "bench.png")

    limit = raise_fd_limit()
    if limit < profile["idle_conns"] + 100:
        profile["idle_conns"] = limit - 100
        print(f"RLIMIT_NOFILE is {limit}: idle connections cut to {profile['idle_conns']}")

    began = time.monotonic()
    results = {}
    for workload in args.workloads.split(","):
        title, run = WORKLOADS[workload]
        print(f"{title}", flush=True)
        # Small messages and the fan-out are the most disturbed by others' load on the
        # machine: run them in rounds, each in the reverse order of the last, and keep
        # each server's best (for small messages, its best rate and lowest CPU per message).
        rounds = profile["runs"].get(workload, 1)
        for round_number in range(rounds):
            for name in names if round_number % 2 == 0 else names[::-1]:
                began_here = time.monotonic()
                try:
                    with Server(name) as server:
                        result = run(server, profile, args.client_procs)
                except Exception as error:  # noqa: BLE001 - one failure must not end the run
                    result = {"error": f"{type(error).__name__}: {error}"}
                print(f"  {name:16} {describe(workload, result)} "
                      f"[{time.monotonic() - began_here:.0f} s]", flush=True)
                previous = results.setdefault(workload, {}).get(name)
                if better(result, previous):
                    results[workload][name] = result
                kept = results[workload][name]
                # CPU per message: the lowest of the rounds, which others' work can only raise.
                costs = [each["server_cpu_us"] for each in (previous, result)
                         if each and "server_cpu_us" in each]
                if costs and "server_cpu_us" in kept:
                    kept["server_cpu_us"] = min(costs)

    # 5. step04's pub/sub or step05's stream: one chat on two processes and a Redis each.
    backplane_lines = []
    if args.backplanes:
        from backplanes import run as run_backplanes

        print("5. pub/sub or stream", flush=True)
        results["backplanes"], backplane_lines = run_backplanes(quick=args.quick)

    print(f"\nDone in {time.monotonic() - began:.0f} s.\n")
    print(report(results, names, profile, args.client_procs))
    print(*backplane_lines, sep="\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if plot_path:
        plot(results, names, plot_path)
        print(f"\nChart: {plot_path}")


if __name__ == "__main__":
    main()
