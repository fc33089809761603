"""/healthz and /readyz over a real loopback socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pyflannel.healthz import HealthServer


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    srv = HealthServer("127.0.0.1", 0, read_timeout=0.5, shutdown_grace=0.5)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def raw(srv: HealthServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def get(srv: HealthServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    resp = await raw(srv, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n".encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


async def test_healthz(server: HealthServer) -> None:
    status, headers, body = await get(server, "/healthz")
    assert (status, body) == (200, b"flanneld is running")
    assert headers["content-type"].startswith("text/plain")
    assert headers["connection"] == "close"
    assert headers["content-length"] == str(len(body))


async def test_readyz_follows_ready_flag(server: HealthServer) -> None:
    assert (await get(server, "/readyz"))[::2] == (503, b"flanneld is not ready yet")
    server.ready = True
    assert (await get(server, "/readyz"))[::2] == (200, b"flanneld is ready")
    server.ready = False
    assert (await get(server, "/readyz"))[0] == 503


@pytest.mark.parametrize("path", ["/", "/healthz/", "/readyzz", "/foo", "/HEALTHZ"])
async def test_other_paths_404(server: HealthServer, path: str) -> None:
    status, _, body = await get(server, path)
    assert status == 404 and body == b"404 page not found\n"


async def test_query_string_and_absolute_form(server: HealthServer) -> None:
    assert (await get(server, "/healthz?x=1"))[0] == 200
    assert (await get(server, "http://localhost/healthz"))[0] == 200


async def test_head_has_no_body(server: HealthServer) -> None:
    status, headers, body = await get(server, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "19"


async def test_post_with_body(server: HealthServer) -> None:
    resp = await raw(server, b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"flanneld is running")


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n",  # EOF before the end of the head
        b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 100000 + b"\r\n\r\n",
    ],
)
async def test_malformed_requests_get_4xx(server: HealthServer, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    if data.endswith(b"HTTP/1.1\r\n"):
        writer.write_eof()
    try:
        resp = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        resp = b"HTTP/1.1 431 (reset after oversized head)"
    finally:
        writer.close()
    assert resp.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), resp[:80]
    # and the server still works
    assert (await get(server, "/healthz"))[0] == 200


async def test_empty_connection_is_harmless(server: HealthServer) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    assert (await get(server, "/healthz"))[0] == 200


async def test_slow_client_does_not_block_others(server: HealthServer) -> None:
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", server.port)
    slow_writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
    await slow_writer.drain()
    results = await asyncio.wait_for(asyncio.gather(*(get(server, "/healthz") for _ in range(5))), 2)
    assert all(r[0] == 200 for r in results)
    # the slow client is dropped after read_timeout (0.5 s) without a response
    assert await asyncio.wait_for(slow_reader.read(), 3) == b""
    slow_writer.close()


async def test_stop_closes_listener() -> None:
    srv = HealthServer("127.0.0.1", 0)
    await srv.start()
    port = srv.port
    await srv.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(RuntimeError):
        _ = srv.port
    await srv.stop()  # idempotent


async def test_stop_with_idle_connection_is_bounded() -> None:
    srv = HealthServer("127.0.0.1", 0, read_timeout=30, shutdown_grace=0.2)
    await srv.start()
    _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(srv.stop(), 2)
    writer.close()


async def test_ipv6_loopback() -> None:
    srv = HealthServer("::1", 0)
    try:
        await srv.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        reader, writer = await asyncio.open_connection("::1", srv.port)
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        resp = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert resp.startswith(b"HTTP/1.1 200 ")
    finally:
        await srv.stop()
