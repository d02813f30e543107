"""Which process holds a job, and whether that process is still there."""

import os
import socket


def current_worker() -> str:
    """This process, as job records name the worker holding them: host and process id."""
    return f"{socket.gethostname()}/{os.getpid()}"


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: there all the same
        return True
    return True


def worker_is_gone(worker: str) -> bool:
    """Whether `worker` (from `current_worker`) was a process on this host that has ended.

    A worker on another host is never judged from here: its jobs expire at their deadlines.
    """
    host, _, pid = worker.rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not pid_is_alive(int(pid))
