"""Run the Autobahn TestSuite cases through kosoku against each WebSocket server.

Usage: python tools/conformance.py [SERVER ...]
       (default: step02 step02-gunicorn step02-simple step03)

Each server is started on a free loopback port; kosoku drives its echo endpoint "/"
with cases 1.* to 7.* and 10.*, and writes HTML reports to reports/<server>/.
The exit status is 1 if any case FAILED, except the known upstream failures below.
"""

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SERVERS, Server  # noqa: E402

# The hardened servers of the steps whose protocol code differs (step04 runs step03's).
DEFAULT_SERVERS = ["step02", "step02-gunicorn", "step02-simple", "step03"]
# 8.* and 9.* are performance cases, 12.* and 13.* need permessage-deflate.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
RUN_TIMEOUT = 300  # seconds for all cases against one server

# Failures that lie in a library we use, not in our code. A listed case that
# passes again fails the run too, so that this list never goes stale.
KNOWN_FAILURES = {
    "step03": {
        # websockets' sans-I/O protocol (uvicorn's ws="websockets-sansio") answers a
        # close frame inside a fragmented message with 1002 instead of echoing 1000.
        "7.1.5": "websockets answers a close between fragments with 1002",
    },
}


async def run_cases(url, cases, timeout):
    """Run the cases against url; return every case's result, failed or not."""
    try:
        return await asyncio.wait_for(run_fuzzingclient(url, cases), timeout)
    except FailureError as failure:
        return failure.results


def verdict(result):
    """Sort a case into passed, non-strict, informational or failed."""
    labels = {result.behavior.value, result.behavior_close.value}
    if not result.passed:
        return "failed"
    if "NON-STRICT" in labels:
        return "non-strict"
    if "INFORMATIONAL" in labels:
        return "informational"
    return "passed"


def check(name):
    """Start one server, run the cases against it, write its reports; return its problems."""
    cwd, command = SERVERS[name]
    server = Server(name, cwd, command).start()
    try:
        results = asyncio.run(run_cases(server.ws_url + "/", CASES, RUN_TIMEOUT))
    finally:
        server.stop()
    outdir = ROOT / "reports" / name
    # Report files are named after host:port, which changes every run.
    shutil.rmtree(outdir, ignore_errors=True)
    write_reports(results, str(outdir))

    counts = Counter(verdict(result) for result in results)
    print(f"{name}: {len(results)} cases, {counts['passed']} passed, "
          f"{counts['non-strict']} non-strict, {counts['informational']} informational, "
          f"{counts['failed']} failed; report: {outdir.relative_to(ROOT)}/index.html", flush=True)
    known = KNOWN_FAILURES.get(name, {})
    problems = []
    for result in results:
        failed = verdict(result) == "failed"
        if failed and result.case_id in known:
            print(f"  known upstream failure {result.case_id}: {known[result.case_id]}")
        elif failed:
            print(f"  FAILED {result.case_id}: {result.behavior.value} / "
                  f"{result.behavior_close.value}: {result.result_close}")
            problems.append(result.case_id)
        elif result.case_id in known:
            print(f"  {result.case_id} passes now: remove it from KNOWN_FAILURES")
            problems.append(result.case_id)
    return problems


def main():
    """Check every server named on the command line, then exit 1 on any unexpected result."""
    names = sys.argv[1:] or DEFAULT_SERVERS
    problems = [case_id for name in names for case_id in check(name)]
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
