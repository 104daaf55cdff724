"""One writer per run folder: a lock file ``<folder>/.writer.lock`` that a training run (its run folder, a
pipeline stage's folder) or a pipeline (its out_dir) holds while it writes there, with the holder's PID, host,
start time and command line in it.

The lock is an fcntl ``flock`` on the open file, held for as long as the run: the kernel drops it when the
holder ends in any way (an exception, SIGKILL, a crash), so a dead holder never leaves the folder stuck. A
holder that ends normally unlinks the file while it still holds the lock (a failed run leaves nothing behind);
a process that locked the file meanwhile sees that its descriptor's inode is no longer the path's and retries.
Where the file system has no flock (some network mounts refuse it) the PID inside decides: a holder on this
host whose PID is gone is taken over. The pipeline's helper processes write into stage folders of their own
(each training run locks its stage folder) and into the sweep folder, which parallel sweep jobs share by design
(cguide.grid.claims: one lock per point), so the sweep folder gets no lock of its own here; a pipeline's sweep
folder lies inside its out_dir, which the pipeline holds."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

LOCK = ".writer.lock"


def _host() -> str:
    return socket.gethostname()[:64]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        fields = path.read_text().split("\t")
    except OSError:
        return {}
    keys = ("pid", "host", "since", "command")
    return dict(zip(keys, fields[:3] + ["\t".join(fields[3:]).strip()])) if len(fields) >= 3 else {}


class FolderLock:
    """``with FolderLock(folder, key):`` -- refused (ValueError, one line naming the holder) while another live
    process holds ``folder``; ``wait_s`` > 0 retries that long first (a killed run's helper finishing its step)."""

    def __init__(self, folder: str | os.PathLike, key: str, wait_s: float = 0.0):
        self.folder, self.key, self.wait_s = Path(folder), key, wait_s
        self.path = self.folder / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            held_by = self._try()
            if held_by is None:
                return
            if time.monotonic() >= deadline:
                raise ValueError(self._refusal(held_by))
            time.sleep(0.5)

    def _try(self) -> dict | None:
        """None when taken; else what the file says of its holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return _holder(self.path)
        except OSError as e:  # no flock on this file system: the PID inside decides
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            holder = _holder(self.path)
            mine = holder.get("host") == _host() and holder.get("pid", "").isdigit()
            if mine and int(holder["pid"]) != os.getpid() and _pid_alive(int(holder["pid"])):
                os.close(fd)
                return holder
        try:  # the path may have been unlinked by a holder releasing it meanwhile: lock the file that is there
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return self._try()
        except FileNotFoundError:
            os.close(fd)
            return self._try()
        self.fd = fd
        record = f"{os.getpid()}\t{_host()}\t{time.strftime('%Y-%m-%d %H:%M:%S')}\t{' '.join(sys.argv)}\n".encode()
        os.pwrite(fd, record, 0)  # write, then cut: a reader never sees the file empty
        os.ftruncate(fd, len(record))
        return None

    def _refusal(self, holder: dict) -> str:
        who = (f"process {holder['pid']} on {holder['host']}, since {holder['since']}" if holder.get("pid")
               else "another process")
        return (f"{self.folder} is in use by another run ({who}; lock file {self.path}): one run writes into a "
                f"folder at a time; wait for that run to end (or stop it), or choose another {self.key}")

    def release(self) -> None:
        if self.fd is not None:
            try:  # unlinked while still held: a failed run leaves no file behind; a waiter re-checks the inode
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
