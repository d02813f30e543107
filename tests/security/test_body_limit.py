import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from handler.schemas import MAX_PROMPT_CHARS
from handler.security.body_limit import MAX_BODY_BYTES, BodySizeLimit
from handler.storage import LocalStorage


def test_a_body_over_the_limit_is_refused_with_413_and_changes_nothing(
    local_client: TestClient, local_storage: LocalStorage
) -> None:
    body = json.dumps({"text": "x" * MAX_BODY_BYTES, "duration": 1})
    response = local_client.post("/generate/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]
    assert local_storage.list_files() == []


def test_a_body_within_the_limit_reaches_the_route(local_client: TestClient) -> None:
    body = json.dumps({"text": "x" * MAX_PROMPT_CHARS, "duration": "bad"}).replace(",", "," + " " * 60_000)
    assert 60_000 < len(body) <= MAX_BODY_BYTES
    response = local_client.post("/generate/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert [error["field"] for error in response.json()["errors"]] == ["duration"]  # the text arrived whole


class EndlessBody:
    """An ASGI `receive` for a chunked body that never ends, counting the chunks taken."""

    def __init__(self, chunk_bytes: int = 1024) -> None:
        self.chunk = b"x" * chunk_bytes
        self.taken = 0

    async def __call__(self) -> Message:
        self.taken += 1
        return {"type": "http.request", "body": self.chunk, "more_body": True}


def run_guarded(scope_headers: list[tuple[bytes, bytes]], receive: Receive) -> tuple[list[Message], bool]:
    reached = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached = True

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/generate/", "headers": scope_headers}
    asyncio.run(BodySizeLimit(app)(scope, receive, send))
    return sent, reached


def test_a_chunked_body_is_refused_once_past_the_limit_without_being_read_whole() -> None:
    body = EndlessBody()
    sent, reached = run_guarded([(b"transfer-encoding", b"chunked")], body)
    assert not reached
    assert sent[0]["status"] == 413
    assert body.taken == MAX_BODY_BYTES // 1024 + 1


def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_read() -> None:
    body = EndlessBody()
    sent, reached = run_guarded([(b"content-length", str(MAX_BODY_BYTES + 1).encode())], body)
    assert not reached
    assert sent[0]["status"] == 413
    assert body.taken == 0


@pytest.fixture
def small_chunks() -> list[Message]:
    return [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b" 1}", "more_body": False},
    ]


def test_a_body_in_chunks_is_handed_on_in_one_piece(small_chunks: list[Message]) -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive())

    async def receive() -> Message:
        return small_chunks.pop(0)

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodySizeLimit(app)(scope, receive, send))
    assert received == [{"type": "http.request", "body": b'{"a": 1}', "more_body": False}]
