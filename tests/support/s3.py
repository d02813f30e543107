"""S3 as the tests see it: moto's server in a region other than us-east-1, and the requests made to it."""

import socket
import threading
from dataclasses import dataclass
from typing import Any

S3_REGION = "eu-west-1"
"""Not us-east-1, where S3's legacy global endpoint would hide region mistakes."""


@dataclass(frozen=True)
class S3Request:
    """One S3 request the storage code made or presigned: the API operation and its parameters."""

    operation: str
    params: dict[str, Any]


class StalledServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: S3 gone quiet."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.listen(64)
        self._accepted: list[Any] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far: one per attempt of a call."""
        return len(self._accepted)

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._accepted.append(connection)

    def close(self) -> None:
        self._closed = True
        self._socket.close()
        for connection in self._accepted:
            connection.close()
