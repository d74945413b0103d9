"""step02 unmasks client frames in C when websockets is installed, else in Python.

Both ways must give back exactly what the client sent, whatever its length.
"""

import sys

import pytest
from websockets.sync.client import connect

TIMEOUT = 5

# Payload lengths around every frame-length encoding and the 4-byte mask period.
LENGTHS = [0, 1, 2, 3, 4, 5, 125, 126, 127, 65535, 65536, 65539, 1_000_003]

# Run wsgi.py as `python wsgi.py` would, with websockets' C extension made unimportable.
WITHOUT_C_UNMASK = (
    "import runpy, sys; sys.modules['websockets.speedups'] = None; "
    "sys.argv = ['wsgi.py', '--port', '{port}']; runpy.run_path('wsgi.py', run_name='__main__')"
)


@pytest.fixture(params=["c", "python"])
def step02(request, make_server):
    """step02 with the C unmask, and with the pure-Python fallback."""
    if request.param == "c":
        return make_server("step02")
    return make_server("step02-python-unmask", cwd="step02_ws_gevent",
                       command=[sys.executable, "-c", WITHOUT_C_UNMASK])


def test_the_server_says_which_unmask_runs(step02, request):
    # Without this, a broken C import would run the Python path under both names.
    expected = {"c": "C", "python": "Python"}[request.node.callspec.params["step02"]]
    assert f"client frames unmasked in {expected}\n" in step02.output()


@pytest.mark.parametrize("length", LENGTHS)
def test_echo_is_unmasked_exactly(step02, length):
    payload = bytes((i * 7 + length) % 256 for i in range(length))
    with connect(step02.ws_url + "/", open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                 max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=TIMEOUT) == payload
        ws.send(payload.decode("latin-1"))
        assert ws.recv(timeout=TIMEOUT) == payload.decode("latin-1")
