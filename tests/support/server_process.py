"""The app as `make run` serves it, in a process of its own: uvicorn on 127.0.0.1, killable."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ServerProcess:
    """A running server: its base URL and its process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    """Where its standard output (the app's JSON log lines) goes."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (not the EMF metric lines beside them on stdout)."""
        lines = self.log.read_text().splitlines()
        return [record for line in lines if line.startswith("{") and "_aws" not in (record := json.loads(line))]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a crash or the OOM killer ends it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@contextmanager
def server_process(env: Mapping[str, str], log: Path) -> Iterator[ServerProcess]:
    """Serve `handler.app:app` with `env` added to this process's environment, logging to `log`.

    The socket listens before uvicorn starts (it is handed over with `--fd`), so a request made at
    once waits in the backlog instead of being refused: nothing waits for the server to come up.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen(64)
    host, port = listener.getsockname()[:2]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "handler.app:app",
                "--fd",
                str(listener.fileno()),
                "--log-level",
                "warning",
            ],
            env={**os.environ, **env},
            pass_fds=[listener.fileno()],
            stdout=output,
        )
    listener.close()
    try:
        yield ServerProcess(f"http://{host}:{port}", process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def poll_until(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 120.0) -> T:
    """Read until `done` holds: another process's state can't be awaited as an event, only read."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout_s} s"
        time.sleep(0.02)
