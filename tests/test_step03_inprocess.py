"""step03 in-process: Falcon's ASGI test conductor drives on_websocket without a server."""

import asyncio
import json

import falcon
import falcon.testing
import pytest

from conftest import load_module

step03 = load_module("step03_app", "step03_ws_asgi/app.py")


@pytest.fixture
def conductor():
    # A fresh room per test: the module-level one would carry clients over.
    step03.room.clients.clear()
    return falcon.testing.ASGIConductor(step03.app)


def run(coroutine):
    """Run one test coroutine with a bound, so a stuck socket fails."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_echoes_text(conductor):
    async def scenario():
        async with conductor as c, c.simulate_ws("/") as ws:
            await ws.send_text("hello")
            return await ws.receive_text()

    assert run(scenario()) == "hello"


def test_echoes_binary(conductor):
    async def scenario():
        async with conductor as c, c.simulate_ws("/") as ws:
            await ws.send_data(b"\x00\xff")
            return await ws.receive_data()

    assert run(scenario()) == b"\x00\xff"


def test_chat_broadcasts_to_everyone(conductor):
    async def scenario():
        async with conductor as c, c.simulate_ws("/chat") as alice:
            welcome = json.loads(await alice.receive_text())
            async with c.simulate_ws("/chat") as bob:
                await bob.receive_text()
                assert json.loads(await alice.receive_text())["type"] == "join"
                await bob.send_text("hi alice")
                return welcome, json.loads(await alice.receive_text())

    welcome, message = run(scenario())
    assert welcome == {"type": "welcome", "id": welcome["id"], "count": 1}
    assert message["type"] == "message" and message["text"] == "hi alice"


def test_chat_closes_binary_with_1003(conductor):
    async def scenario():
        async with conductor as c, c.simulate_ws("/chat") as ws:
            await ws.receive_text()
            await ws.send_data(b"binary")
            with pytest.raises(falcon.WebSocketDisconnected):
                await ws.receive_text()
            return ws.close_code

    assert run(scenario()) == 1003


def test_refuses_a_foreign_origin(conductor):
    async def scenario():
        async with conductor as c:
            with pytest.raises(falcon.WebSocketDisconnected) as refused:
                async with c.simulate_ws("/", headers={"Origin": "http://evil.example"}):
                    pass
            return refused.value.code

    # Falcon closes before accepting, with 3000 + the HTTP status; uvicorn sends a 403.
    assert run(scenario()) == 3403


def test_plain_get_answers_426(conductor):
    async def scenario():
        async with conductor as c:
            return await c.simulate_get("/")

    result = run(scenario())
    assert result.status_code == 426
    assert result.text.startswith("This endpoint is for Websockets only.")
