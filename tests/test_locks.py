"""The run-folder lock (cguide/io/locks.py) leaves no file behind when it is released, and a lock whose file was
unlinked under it is never mistaken for the folder's lock."""

from __future__ import annotations

import os

import pytest

from cguide.io.locks import LOCK, FolderLock


def test_released_lock_leaves_no_file_and_a_held_one_refuses(tmp_path):
    a = FolderLock(tmp_path, "out_dir")
    a.acquire()
    assert (tmp_path / LOCK).is_file()
    with pytest.raises(ValueError, match=r"is in use by another run \(process \d+ on"):
        FolderLock(tmp_path, "out_dir").acquire()
    a.release()
    assert not (tmp_path / LOCK).exists()  # a failed run leaves its folder as it found it
    with FolderLock(tmp_path, "out_dir"):
        pass
    assert os.listdir(tmp_path) == []


def test_a_descriptor_locked_on_an_unlinked_file_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """A waiter that opened the file just before the holder unlinked it must retry on the new file."""
    stale = tmp_path / "stale"
    stale.write_text("")
    fd = os.open(stale, os.O_RDWR)
    real_open = os.open
    calls = []

    def open_once_stale(path, *a, **k):  # the first open returns a descriptor of a file no longer at the path
        if str(path).endswith(LOCK) and not calls:
            calls.append(path)
            return fd
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", open_once_stale)
    lock = FolderLock(tmp_path, "out_dir")
    lock.acquire()
    assert len(calls) == 1 and os.fstat(lock.fd).st_ino == os.stat(tmp_path / LOCK).st_ino
    lock.release()
    os.close(fd) if not _closed(fd) else None


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
