"""A stand-in for the Lambda Runtime API on 127.0.0.1, enough for awslambdaric to run a function.

It serves what the runtime interface client calls: GET .../invocation/next (held open until an
event is queued, as Lambda does), POST .../invocation/{id}/response and .../error, and
POST .../init/error. See https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html.
"""

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:srocks-music"


@dataclass
class Invocation:
    """One event handed to the runtime, and what the runtime posted back for it."""

    event: dict[str, Any]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str | None = None  # "response", "error", or why it never got one
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class RuntimeApiStub:
    """The Runtime API for one function instance; `invoke` blocks until the function answers."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Invocation | None] = queue.Queue()
        self._invocations: dict[str, Invocation] = {}
        self._lock = threading.Lock()
        self.init_error: Any = None
        self.trace_id = "Root=1-5e1b4151-5ac6c58f5b5dbd6a2f6e4a5b;Parent=53995c3f42cd8ad8;Sampled=1"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """host:port, as AWS_LAMBDA_RUNTIME_API takes it."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: dict[str, Any], timeout: float) -> Invocation:
        """Queue `event` for the function and wait for its response, error, or the runtime's end."""
        invocation = Invocation(event)
        with self._lock:
            self._invocations[invocation.request_id] = invocation
        self._queue.put(invocation)
        if not invocation.done.wait(timeout):
            raise TimeoutError(f"no answer to {invocation.request_id} within {timeout} s")
        return invocation

    def abort(self, reason: str) -> None:
        """The function is gone: every waiting invocation ends with `reason`."""
        with self._lock:
            waiting = [i for i in self._invocations.values() if not i.done.is_set()]
        for invocation in waiting:
            invocation.outcome = reason
            invocation.done.set()

    def _finish(self, request_id: str, outcome: str, body: Any, headers: dict[str, str]) -> bool:
        with self._lock:
            invocation = self._invocations.get(request_id)
        if invocation is None or invocation.done.is_set():
            return False
        invocation.outcome, invocation.body, invocation.headers = outcome, body, headers
        invocation.done.set()
        return True

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: HTTPStatus, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(HTTPStatus.NOT_FOUND)
                    return
                invocation = stub._queue.get()
                if invocation is None:  # closing: the runtime is being stopped
                    stub._queue.put(None)
                    self._reply(HTTPStatus.INTERNAL_SERVER_ERROR)
                    return
                deadline_ms = int(time.time() * 1000) + 900_000
                self._reply(
                    HTTPStatus.OK,
                    json.dumps(invocation.event).encode(),
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                        "Lambda-Runtime-Trace-Id": stub.trace_id,
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else None
                headers = {name.lower(): value for name, value in self.headers.items()}
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    stub.init_error = body
                    stub.abort(f"init error: {body}")
                    self._reply(HTTPStatus.ACCEPTED)
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in {"response", "error"}:
                    known = stub._finish(parts[1], parts[2], body, headers)
                    self._reply(HTTPStatus.ACCEPTED if known else HTTPStatus.BAD_REQUEST)
                else:
                    self._reply(HTTPStatus.NOT_FOUND)

        return Handler


@dataclass
class LambdaRuntime:
    """`python -m awslambdaric <the image's CMD>` running against a Runtime API stand-in."""

    api: RuntimeApiStub
    log_path: Path
    environment: dict[str, str]

    def log(self) -> str:
        """What the function printed so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")
