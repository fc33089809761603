"""flanneld's health endpoints over a minimal asyncio HTTP/1.1 server.

* ``GET /healthz`` -> 200 ``flanneld is running`` (whenever the process serves requests)
* ``GET /readyz``  -> 200 ``flanneld is ready`` once :attr:`HealthServer.ready` is set (the daemon
  sets it after writing subnet.env), else 503 ``flanneld is not ready yet``
* any other path -> 404 ``404 page not found`` (Go ``http.ServeMux`` text); the method is not
  checked (as in flannel); ``HEAD`` gets the headers only.

One request per connection (``Connection: close``). Malformed requests get 400; a client that does
not send its request head within ``read_timeout`` seconds is dropped, and every connection is served
by its own task, so slow clients never delay others. Whether the server runs at all (flannel:
``--healthz-port`` 0 = disabled) is the daemon's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
MAX_BODY_BYTES = 65536

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class _BadRequest(Exception):
    def __init__(self, status: int = 400) -> None:
        super().__init__(status)
        self.status = status


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HealthServer:
    """The /healthz and /readyz server. ``ready`` is read on every /readyz request."""

    def __init__(
        self, host: str, port: int, *, read_timeout: float = 10.0, shutdown_grace: float = 3.0
    ) -> None:
        self.host = host
        self.requested_port = port
        self.read_timeout = read_timeout
        self.shutdown_grace = shutdown_grace
        self.ready = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0). Only after start()."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("health server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the address cannot be bound."""
        log.info("Start healthz server on %s", _join_host_port(self.host, self.requested_port))
        # flannel's http.Server treats an empty host as "all addresses".
        host = self.host or None
        self._server = await asyncio.start_server(
            self._on_connection, host, self.requested_port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop accepting; give open requests ``shutdown_grace`` seconds, then cancel them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = set(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), self.shutdown_grace)

    # ------------------------------------------------------------------ connection handling

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # never let a client take the server down
            log.exception("healthz: error handling a request")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await self._read_head(reader)
                method, path, headers = self._parse_head(head)
                await self._drain_body(reader, headers)
        except TimeoutError:
            return  # slow or idle client: drop it
        except _BadRequest as e:
            await self._respond(writer, e.status, f"{e.status} {_REASONS[e.status]}", head_only=False)
            return
        status, body = self._route(path)
        await self._respond(writer, status, body, head_only=method == "HEAD")

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes:
        buf = bytearray()
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _BadRequest(431) from None
            except asyncio.IncompleteReadError as e:
                if not buf and not e.partial:
                    raise  # connection closed without a request
                raise _BadRequest() from None
            if not buf and line in (b"\r\n", b"\n"):
                continue  # tolerate leading blank lines (RFC 9112 2.2)
            buf += line
            if len(buf) > MAX_HEAD_BYTES:
                raise _BadRequest(431)
            if line in (b"\r\n", b"\n"):
                return bytes(buf)

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest() from None
        lines = text.replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0] or not parts[0].isalpha() or not parts[1]:
            raise _BadRequest()
        method, target, version = parts
        if not version.startswith("HTTP/1.") or len(version) != 8 or not version[7].isdigit():
            raise _BadRequest()
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _BadRequest()
            headers[name.lower()] = value.strip()
        if target.startswith("/"):
            path = urllib.parse.urlsplit(target).path
        elif target.startswith(("http://", "https://")):
            path = urllib.parse.urlsplit(target).path or "/"
        elif target == "*" and method == "OPTIONS":
            path = "*"
        else:
            raise _BadRequest()
        return method, path, headers

    async def _drain_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        """Read a small declared body so closing the socket does not reset the connection."""
        if "transfer-encoding" in headers:
            return  # not supported; we close the connection after answering anyway
        length = headers.get("content-length")
        if length is None:
            return
        if not length.isdigit():
            raise _BadRequest()
        n = int(length)
        if 0 < n <= MAX_BODY_BYTES:
            await reader.readexactly(n)

    def _route(self, path: str) -> tuple[int, str]:
        if path == "/healthz":
            return 200, "flanneld is running"
        if path == "/readyz":
            if self.ready:
                return 200, "flanneld is ready"
            return 503, "flanneld is not ready yet"
        return 404, "404 page not found\n"

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: str, *, head_only: bool) -> None:
        data = body.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode()
        writer.write(head if head_only else head + data)
        await writer.drain()
