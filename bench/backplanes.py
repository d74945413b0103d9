"""Pub/sub or a stream? step04's and step05's chat on two processes through one Redis.

    python bench/backplanes.py           # about 2 minutes: 1,000 clients, 5 replays of 1,000
    python bench/backplanes.py --quick   # tiny loads: checks that it runs

`make bench` runs it after bench/run.py's workloads. Each step runs as `make step04` and
`make step05` run it: two server.py processes on one throwaway redis-server, without
persistence for step04, with its append-only file (appendfsync everysec) for step05.

1. Events delivered: half the clients join each process; one client per process sends
   plain-text messages as fast as its own messages come back, a few in flight at a time,
   and every client counts the messages it receives. Events per second, all clients.
2. Replay (step05 only): a client leaves, 1,000 messages are sent, and it comes back with
   ?last_id=: the time from its connect until the 1,000th missed message has arrived.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
REDIS_SERVER = shutil.which("redis-server")
STARTUP_TIMEOUT = 20  # seconds for a server process to accept a WebSocket
CONNECT_CONCURRENCY = 25  # handshakes in flight per client process
CLIENT_OPTIONS = {"compression": None, "ping_interval": None, "max_size": None,
                  "max_queue": None, "open_timeout": 60, "close_timeout": 2, "proxy": None}

# Each step as its Makefile target runs it: its folder, and its redis-server's persistence.
STEPS = {
    "step04 pub/sub": ("step04_scale_out", ["--appendonly", "no"]),
    "step05 stream": ("step05_resume", ["--appendonly", "yes"]),
}
# Others' load on the machine disturbs a rate: each step runs `rounds` times, in turn
# (step04, step05, then step05, step04, ...), and keeps its best.
FULL = {"clients": 1000, "seconds": 5, "window": 8, "missed": 1000, "replays": 5, "rounds": 3}
QUICK = {"clients": 20, "seconds": 0.5, "window": 4, "missed": 50, "replays": 1, "rounds": 1}
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RATIO = 0.5  # step05's events/s at least half of step04's
TARGET_REPLAY_MS = 100  # 1,000 missed messages replayed within


def free_port():
    """Ask the kernel for a loopback port nobody is using."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A throwaway redis-server on a free port, its files in a temporary folder."""

    def __init__(self, persistence):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tempfile.TemporaryDirectory()
        self.command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                        "--save", "", *persistence, "--dir", self.folder.name]

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not answer PING in 10 s")

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        self.folder.cleanup()


class Process:
    """One server.py of a step, on a free port, killed with its process group."""

    def __init__(self, folder, redis_url):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.cwd = ROOT / folder
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "REDIS_URL": redis_url}
        self.log = tempfile.TemporaryFile()

    def __enter__(self):
        self.process = subprocess.Popen(
            [PYTHON, "server.py", "--port", str(self.port)], cwd=self.cwd, env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        from websockets.sync.client import connect

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.cwd.name} exited early:\n{self.output()}")
            try:
                with connect(self.url, open_timeout=2, proxy=None) as ws:
                    ws.send("ready?")
                    ws.recv(timeout=2)
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.cwd.name} did not accept a WebSocket in {STARTUP_TIMEOUT} s")

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __exit__(self, *exc):
        # SIGKILL: faster than closing 500 sockets, and no leave announcements to wait for.
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()


# ---------------------------------------------------------------- load generator
# One process per server process: it joins `count` clients there and reports over a pipe.


async def open_many(url, count, on_open):
    """Open count connections, a few handshakes at a time."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one():
        async with gate:
            ws = await connect(url, **CLIENT_OPTIONS)
        on_open(ws)
        return ws

    return await asyncio.gather(*(one() for _ in range(count)))


async def chat_load(conn, url, count, window):
    """Join the chat count times, send from one client, count every message received."""
    from websockets.exceptions import ConnectionClosedError

    loop = asyncio.get_running_loop()
    state = {"welcomed": 0, "delivered": 0, "dropped": 0, "last_event": time.monotonic()}
    span = [float("inf"), 0.0]  # the measuring window, once the parent has set it
    marker = f"bench {os.getpid()} "
    in_flight = asyncio.Semaphore(window)  # the sender's messages not yet back

    async def read(ws, is_sender):
        try:
            async for raw in ws:
                now = time.monotonic()
                state["last_event"] = now
                # Look for text before parsing: the join storm is n * n / 2 events.
                if '"type": "welcome"' in raw:
                    state["welcomed"] += 1
                elif '"type": "message"' in raw:
                    if span[0] <= now < span[1]:
                        state["delivered"] += 1
                    if is_sender and marker in raw:
                        in_flight.release()
        except ConnectionClosedError:
            pass
        state["dropped"] += 1

    opened, readers = [], []

    def on_open(ws):
        opened.append(ws)
        # The first connection to open is the one that sends.
        readers.append(asyncio.create_task(read(ws, is_sender=len(opened) == 1)))

    connections = await open_many(url + "chat?history=0", count, on_open)
    # Ready once every client is welcomed and the join storm has passed.
    deadline = time.monotonic() + 180
    while state["welcomed"] < count or time.monotonic() - state["last_event"] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{state['welcomed']} of {count} clients welcomed")
        await asyncio.sleep(0.2)
    conn.send(("ready", None))
    start, stop = await loop.run_in_executor(None, conn.recv)
    span[:] = [start, stop]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    sent = 0
    while time.monotonic() < stop:
        try:
            await asyncio.wait_for(in_flight.acquire(), stop - time.monotonic())
        except asyncio.TimeoutError:
            break
        await opened[0].send(f"{marker}{sent}")
        sent += 1
    await asyncio.sleep(1)  # the last messages still land, outside the window
    if state["dropped"]:
        raise RuntimeError(f"{state['dropped']} chat clients were dropped")
    conn.send(("done", state["delivered"]))
    for ws in connections:
        ws.transport.abort()


def raise_fd_limit():
    """Allow as many open sockets as the hard limit: 500 clients need 500 files."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_process(conn, url, count, window):
    """A load-generator process: report its count, or its error, to the parent."""
    raise_fd_limit()
    try:
        asyncio.run(chat_load(conn, url, count, window))
    except Exception as error:  # noqa: BLE001 - the parent prints it
        conn.send(("error", f"{type(error).__name__}: {error}"))


def gather(pipes, expected, timeout):
    """Each client process's next report; raise if one fails or is late."""
    deadline = time.monotonic() + timeout
    results = []
    for pipe in pipes:
        if not pipe.poll(max(0, deadline - time.monotonic())):
            raise TimeoutError(f"the load generator did not report {expected!r} in time")
        tag, payload = pipe.recv()
        if tag != expected:
            raise RuntimeError(payload)
        results.append(payload)
    return results


def cpu_seconds(pids):
    """User plus system CPU time of these processes."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def events_per_second(processes, profile):
    """Workload 1: messages received per second by all clients, over both processes,
    and the server processes' CPU time per message received."""
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    share = profile["clients"] // len(processes)
    try:
        for process in processes:
            ours, theirs = context.Pipe()
            child = context.Process(target=client_process, daemon=True,
                                    args=(theirs, process.url, share, profile["window"]))
            child.start()
            pipes.append(ours)
            children.append(child)
        gather(pipes, "ready", 240)
        start = time.monotonic() + 0.5
        for pipe in pipes:
            pipe.send((start, start + profile["seconds"]))
        servers = [process.process.pid for process in processes]
        time.sleep(max(0.0, start - time.monotonic()))
        cpu = cpu_seconds(servers)
        time.sleep(profile["seconds"])
        cpu = cpu_seconds(servers) - cpu
        delivered = sum(gather(pipes, "done", profile["seconds"] + 60))
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    return delivered / profile["seconds"], 1e6 * cpu / max(delivered, 1)


async def replay_seconds(url_back, url_sender, missed):
    """Workload 2: seconds from reconnecting with last_id to the last missed message."""
    from websockets.asyncio.client import connect

    async with connect(url_back + "chat?history=0", **CLIENT_OPTIONS) as away:
        last_id = json.loads(await away.recv())["last_id"]
    async with connect(url_sender + "chat?history=0", **CLIENT_OPTIONS) as sender:
        await sender.recv()  # its welcome
        for number in range(missed):
            await sender.send(f"missed {number}")
        back = 0
        while back < missed:  # all stored once the sender has them all back
            back += '"type": "message"' in await sender.recv()
    started = time.monotonic()
    async with connect(f"{url_back}chat?last_id={last_id}", **CLIENT_OPTIONS) as returning:
        got = 0
        while got < missed:
            got += '"type": "message"' in await returning.recv()
        return time.monotonic() - started


def run(quick=False):
    """Both workloads; return the results and the report's lines."""
    profile = QUICK if quick else FULL
    if REDIS_SERVER is None:
        return {}, ["- pub/sub or stream: NOT measured, no redis-server (apt-get install "
                    "redis-server)"]
    results = {}
    for round_number in range(profile["rounds"]):
        for name in STEPS if round_number % 2 == 0 else list(STEPS)[::-1]:
            began = time.monotonic()
            result = run_step(name, profile, replays=round_number == 0)
            best = results.get(name, {})
            if result.get("events_per_s", 0) > best.get("events_per_s", -1):
                replays = {"replays_ms": best["replays_ms"]} if "replays_ms" in best else {}
                results[name] = {**result, **replays}  # the first round's replays stay
            print(f"  {name:16} {describe(result)} [{time.monotonic() - began:.0f} s]",
                  flush=True)
    return results, report(results, profile)


def run_step(name, profile, replays):
    """One step on its own Redis and two processes: events/s, and step05's replays."""
    folder, persistence = STEPS[name]
    try:
        with Redis(persistence) as redis, Process(folder, redis.url) as first, \
                Process(folder, redis.url) as second:
            rate, cpu_us = events_per_second([first, second], profile)
            result = {"events_per_s": rate, "server_cpu_us": cpu_us}
            if replays and name.startswith("step05"):
                result["replays_ms"] = [
                    1000 * asyncio.run(replay_seconds(first.url, second.url, profile["missed"]))
                    for _ in range(profile["replays"])]
            return result
    except Exception as error:  # noqa: BLE001 - one failure must not end the run
        return {"error": f"{type(error).__name__}: {error}"}


def describe(result):
    """One progress line."""
    if "error" in result:
        return "FAILED: " + result["error"].splitlines()[0][:200]
    line = (f"{result['events_per_s']:,.0f} events/s delivered, servers' CPU "
            f"{result['server_cpu_us']:.1f} µs per event")
    if "replays_ms" in result:
        line += f", replay median {statistics.median(result['replays_ms']):.0f} ms"
    return line


def report(results, profile):
    """The results as markdown list items, each with its target."""
    pubsub, stream = results.get("step04 pub/sub", {}), results.get("step05 stream", {})
    lines = []
    if "events_per_s" in pubsub and "events_per_s" in stream:
        ratio = stream["events_per_s"] / pubsub["events_per_s"]
        by_cpu = pubsub["server_cpu_us"] / stream["server_cpu_us"]
        lines.append(
            f"- chat on two processes through one Redis, {profile['clients']:,} clients: "
            f"step04 pub/sub {pubsub['events_per_s']:,.0f} events/s, step05 stream "
            f"{stream['events_per_s']:,.0f} events/s; stream / pub/sub {ratio:.2f} (by the "
            f"servers' CPU per event {by_cpu:.2f}; target >= {TARGET_RATIO}: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    else:
        lines.append("- pub/sub or stream: failed, see above")
    if "replays_ms" in stream:
        median, worst = statistics.median(stream["replays_ms"]), max(stream["replays_ms"])
        met = "met" if median < TARGET_REPLAY_MS else "NOT met"
        lines.append(
            f"- step05 replay of {profile['missed']:,} missed messages to a reconnecting "
            f"client: median {median:.0f} ms, worst {worst:.0f} ms of {profile['replays']} "
            f"(target < {TARGET_REPLAY_MS} ms: {met})")
    return lines


def main():
    """Run both workloads and print the results."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny loads: check that it runs")
    args = parser.parse_args()
    print("5. pub/sub or stream", flush=True)
    _, lines = run(quick=args.quick)
    print("", *lines, sep="\n")


if __name__ == "__main__":
    main()
