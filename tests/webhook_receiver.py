"""A webhook receiver for the tests: a real HTTP/1.1 server on 127.0.0.1 (trio + h11)
that checks every delivery's signature, remembers what it got, and answers as the test
says (a status, or holding the answer until the test lets it go)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h11
import orjson
import trio

from engine.webhooks import SIGNATURE_HEADER, verify


@dataclass
class Delivery:
    body: dict[str, Any]
    signature_ok: bool
    answered: int
    held: bool = False  # arrived while answers were held: never counts as accepted


@dataclass
class Receiver:
    secret: str
    status: int = 200  # what the next requests are answered
    hold: trio.Event | None = None  # set: answer; None: answer at once
    deliveries: list[Delivery] = field(default_factory=list)  # answered 2xx or not
    port: int = 0
    held: int = 0  # requests that arrived while answers were held
    drop_connections: bool = False  # close each connection after its answer, unannounced
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 2xx, in arrival order."""
        return [d.body for d in self.deliveries if 200 <= d.answered < 300 and not d.held]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        """Until ``predicate(self)`` holds (re-checked at each delivery)."""
        with trio.fail_after(timeout):
            while not predicate(self):
                changed = self._changed
                await changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        connection.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                held = self.hold is not None
                if self.hold is not None:
                    self.held += 1
                    self._wake()
                    await self.hold.wait()
                headers = {name.decode().lower(): value.decode() for name, value in request.headers}
                status = self.status
                self.deliveries.append(
                    Delivery(
                        orjson.loads(body),
                        verify(self.secret, headers.get(SIGNATURE_HEADER.lower(), ""), body),
                        status,
                        held,
                    )
                )
                self._wake()
                reply = b"{}"
                await stream.send_all(
                    connection.send(
                        h11.Response(
                            status_code=status,
                            headers=[("content-length", str(len(reply)))],
                        )
                    )
                    + connection.send(h11.Data(data=reply))
                    + connection.send(h11.EndOfMessage())
                )
                if self.drop_connections:
                    await stream.aclose()
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
