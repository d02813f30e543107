import os
import socket
import subprocess
import sys

from handler.processes import current_worker, pid_is_alive, worker_is_gone


def ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_this_process_is_alive_and_not_gone() -> None:
    assert pid_is_alive(os.getpid())
    assert current_worker() == f"{socket.gethostname()}/{os.getpid()}"
    assert not worker_is_gone(current_worker())


def test_an_ended_process_on_this_host_is_gone() -> None:
    pid = ended_pid()
    assert not pid_is_alive(pid)
    assert worker_is_gone(f"{socket.gethostname()}/{pid}")


def test_a_worker_on_another_host_or_unreadable_is_never_judged_gone() -> None:
    pid = ended_pid()
    assert not worker_is_gone(f"another-host/{pid}")
    assert not worker_is_gone("garbage")
    assert not worker_is_gone(f"{socket.gethostname()}/not-a-pid")
