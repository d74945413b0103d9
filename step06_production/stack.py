"""Run step 6 on this machine: Redis, two app processes, nginx with TLS: python stack.py.

Everything secret is made now, in a temporary folder removed at exit: a test CA and the
certificate it signs (trustme), the demo user's random password. Ctrl+C stops all four.
Each process is started as a reader would start it by hand: the commands are printed.
"""

import argparse
import base64
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

HERE = Path(__file__).resolve().parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # Debian's is in /usr/sbin
REDIS = shutil.which("redis-server") or "redis-server"
READ_TIMEOUT = "60s"  # nginx's default, written out: above PING_INTERVAL (20 s)


def make_tls(folder):
    """Write a new CA (ca.pem) and a certificate for localhost it signs (cert.pem, key.pem)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    os.chmod(folder / "key.pem", 0o600)  # only the owner (nginx's master) reads the key
    with open(folder / "cert.pem", "wb") as file:
        for pem in cert.cert_chain_pems:
            file.write(pem.bytes())
    return folder / "ca.pem"


def spki_hash(cert_path):
    """The base64 SHA-256 of a certificate's public key: what Chromium can be told to trust."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(key).digest()).decode()


def nginx_conf(run_dir, https_port, http_port, app_ports, read_timeout=READ_TIMEOUT):
    """nginx.conf with its @NAMES@ filled in, written to run_dir; return its path."""
    servers = "\n        ".join(f"server 127.0.0.1:{port};" for port in app_ports)
    text = (HERE / "nginx.conf").read_text()
    for name, value in {"RUN_DIR": run_dir, "HTTPS_PORT": https_port, "HTTP_PORT": http_port,
                        "UPSTREAM_SERVERS": servers, "READ_TIMEOUT": read_timeout}.items():
        text = text.replace(f"@{name}@", str(value))
    path = Path(run_dir) / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(run_dir):
    """How to start nginx on a conf that nginx_conf() wrote: in the foreground, no root needed."""
    return [NGINX, "-p", str(run_dir), "-c", str(Path(run_dir) / "nginx.conf")]


def app_command(port):
    """How to start one app process: what `make step06` starts twice, and the tests once."""
    return [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port)]


def wait_for_port(port, process, timeout=15):
    """Return once something listens on port; fail if process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args[0]} exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on port {port} after {timeout} s")


def main():
    """Start Redis, the demo user, two app processes and nginx; stop them all on Ctrl+C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8443, help="nginx's https:// port")
    parser.add_argument("--http-port", type=int, default=8080, help="redirected to https://")
    parser.add_argument("--app-ports", type=int, nargs=2, default=[8000, 8001])
    parser.add_argument("--redis-port", type=int, default=6380)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="step06-"))
    os.chmod(run_dir, 0o711)  # nginx's workers may run as another user: let them in
    processes = []

    def start(command, **env):
        print("$", *(f"{k}={v}" for k, v in env.items()), shlex.join(command), flush=True)
        processes.append(subprocess.Popen(command, cwd=HERE, env={**os.environ, **env}))
        return processes[-1]

    try:
        ca = make_tls(run_dir)
        redis = start([REDIS, "--bind", "127.0.0.1", "--port", str(args.redis_port),
                       "--save", "", "--appendonly", "yes", "--dir", str(run_dir),
                       "--loglevel", "warning"])
        wait_for_port(args.redis_port, redis)
        url = f"redis://127.0.0.1:{args.redis_port}/0"
        subprocess.run([sys.executable, "auth.py", "add-user", "demo"], cwd=HERE, check=True,
                       env={**os.environ, "REDIS_URL": url})
        origin = f"https://localhost:{args.port}"
        for port in args.app_ports:
            app = start(app_command(port), REDIS_URL=url, ALLOWED_ORIGINS=origin,
                        FORWARDED_ALLOW_IPS="127.0.0.1")
            wait_for_port(port, app)
        nginx_conf(run_dir, args.port, args.http_port, args.app_ports)
        wait_for_port(args.port, start(nginx_command(run_dir)))
        print(f"\nOpen {origin}/client/?endpoint=chat and log in as demo with the password "
              f"above.\nThe browser does not know the CA that signed the certificate: trust "
              f"{ca} (Firefox: Settings > Certificates > Import), or accept the warning.\n"
              f"curl --cacert {ca} {origin}/health\nCtrl+C stops everything.", flush=True)
        # Until Ctrl+C, SIGTERM, or one of the four dies: then stop them all.
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # nginx first, Redis last: each stops while what it talks to is still there.
        for process in reversed(processes):
            process.terminate()
            process.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl+C does
    main()
