"""A ceiling on the size of a request's body, kept before the app reads it (an ASGI middleware)."""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The most a request's body may hold. The largest valid one, a publish with a caption of Facebook's limit
# (`FACEBOOK_TEXT_LIMIT`, 63,206 characters) and two 2,048-character addresses, stays under 0.8 MiB even with every
# character sent as a JSON escape pair ("\ud83d\ude00", 12 bytes for one character); as usually written, it is a few
# kilobytes.
MAX_BODY_BYTES = 1024 * 1024


def too_large(limit: int) -> str:
    return f"request body too large: at most {limit} bytes are taken"


class BodyTooLarge(HTTPException):
    """A body that passed the limit while it was read: answered 413 by the app's handler of HTTP errors (FastAPI
    lets an HTTPException out of its body reading as it is, where any other error would read as unparseable JSON)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit), headers={"Connection": "close"})


class BodyLimit:
    """Refuses (413) a request whose Content-Length is above `max_bytes` before any of its body is read, and one
    sent without a length (chunked) once more than that has arrived; the app never holds more of a body."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_noting_start)
        except BodyTooLarge:
            # Read outside the app's handlers (none answered it): said here, unless an answer has begun.
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": too_large(self.max_bytes)}).encode()
        # The body is left unread: the connection is closed after the answer, not kept for another request.
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
