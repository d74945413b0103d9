"""A few Autobahn TestSuite cases per server; `make conformance` runs the full set."""

import asyncio

from kosoku import FailureError, run_fuzzingclient

# Framing, fragmentation and close codes: where gevent-websocket needed repairs.
CASES = ["1.1.*", "5.*", "7.3.*"]
RUN_TIMEOUT = 30  # seconds for all the cases against one server


async def run_cases(url):
    """Run CASES against url; return every case's result, failed or not."""
    try:
        return await asyncio.wait_for(run_fuzzingclient(url, CASES), RUN_TIMEOUT)
    except FailureError as failure:
        return failure.results


def test_passes_autobahn_framing_fragmentation_and_close_cases(server):
    results = asyncio.run(run_cases(server.ws_url + "/"))
    failed = [
        f"{result.case_id}: {result.behavior.value} / {result.behavior_close.value}"
        for result in results if not result.passed
    ]
    assert len(results) == 34
    assert failed == []
