"""One training per run folder: a lock file that names its owner.

The rule: a process trains into a run folder only while it holds ``<run>/train.lock``, a file
created with O_CREAT | O_EXCL (so of two processes that try at once exactly one succeeds),
holding the owner's process id, host and start time. Whoever finds the file held by a living
process is refused, with the folder, the owner and what to do named. A lock whose owner is dead
(its process id no longer runs on this host, or now belongs to a younger process) is stale: it
is taken over, with a printed note. A lock from another host cannot be checked from here, so it
is refused, and the message says how to remove it by hand. The owner deletes the file when it
ends, on errors and Ctrl-C too; only a hard kill (SIGKILL, power loss) leaves a stale lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Union

__all__ = ["RunLock", "RunLocked", "LOCK_NAME"]

LOCK_NAME = "train.lock"

# A lock file is created empty and written a moment later: an unreadable one younger than this
# may be mid-write; an older one was left by a process that died in between, and is stale.
_WRITE_GRACE_S = 10.0
# A lock file found empty is read again this many times, this far apart (its owner writes a line of
# JSON right after creating it), before the refusal says only that it is being written.
_REREADS, _REREAD_S = 20, 0.01


class RunLocked(FileExistsError):
    """Another process trains into this run folder (a FileExistsError: the CLI prints it as one line)."""


def _start_time(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot, Linux's /proc/<pid>/stat field 22),
    or None where unknown. With it a process id reused by a younger process is told apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: Optional[str]) -> bool:
    """Does process ``pid`` (started at ``started``, when known) still run on this host?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user; anything else: assume it runs
        return True
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the id was reused by a younger process
    return True


def _identity(st: os.stat_result) -> tuple:
    """What tells one lock file from another, even one created at the same path after it was
    deleted (which may reuse its inode number): (inode, mtime in ns, size)."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RunLock:
    """The lock of one run folder. ``acquire()`` takes it (raising :class:`RunLocked` when a
    living process holds it; taking over a stale one with a note), ``release()`` gives it back;
    ``check()`` raises as ``acquire`` would, without taking it. Also a context manager."""

    def __init__(self, folder: Union[str, Path], say=None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.token: Optional[str] = None  # set while held: what identifies our lock file
        self._say = say or (lambda msg: print(msg, file=sys.stderr))

    @property
    def held(self) -> bool:
        return self.token is not None

    # ------------------------------------------------------------------ reading
    def owner(self) -> Optional[dict]:
        """The lock file's content (pid, host, started, since, command, token); None when there is
        no lock file; ``{}`` when it cannot be read as one."""
        return self._read()[0]

    def _read(self) -> tuple[Optional[dict], Optional[tuple]]:
        """(what :meth:`owner` returns, the identity of the file it was read from): the identity
        (inode, mtime in ns, size) is taken from the same open file as the content, so it names
        exactly the lock that was read; None where the file could not be opened or stat'ed."""
        try:
            with open(self.path, "rb") as f:
                ident = _identity(os.fstat(f.fileno()))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return None, None
        except OSError:
            try:
                return {}, _identity(os.stat(self.path))
            except FileNotFoundError:
                return None, None
            except OSError:
                return {}, None
        try:
            info = json.loads(text)
        except ValueError:
            return {}, ident
        return (info if isinstance(info, dict) and isinstance(info.get("pid"), int) else {}), ident

    def _stale(self, info: dict, ident: Optional[tuple] = None) -> Optional[str]:
        """Why the lock described by ``info`` (read from the file ``ident``, when known) is stale,
        or None when its owner may still run."""
        if not info:
            if ident is not None:
                mtime = ident[1] / 1e9
            else:
                try:
                    mtime = self.path.stat().st_mtime
                except FileNotFoundError:
                    return "it is gone"
            age = time.time() - mtime
            return f"the lock file is unreadable and {age:.0f} s old" if age > _WRITE_GRACE_S else None
        if info.get("host") != socket.gethostname():
            return None  # a process on another machine: cannot tell from here
        if not _alive(info["pid"], info.get("started")):
            return f"its owner, process {info['pid']} on this host, no longer runs"
        return None

    def _refusal(self, info: dict) -> RunLocked:
        folder = str(self.folder)
        if not info:
            return RunLocked(
                f"run folder {folder!r} is locked by another training (its lock file {str(self.path)!r} is being "
                "written); wait for it to finish, or train into another --out")
        here = info.get("host") == socket.gethostname()
        who = f"process {info['pid']}" + ("" if here else f" on host {info.get('host')!r}")
        since = f", since {info['since']}" if info.get("since") else ""
        hint = ("if that process is not a difflab training of this folder (it was killed), delete the lock file"
                if here else f"if no training runs on {info.get('host')!r}, delete the lock file")
        return RunLocked(
            f"run folder {folder!r} is in use by another training ({who}{since}; lock file {str(self.path)!r}): "
            f"wait for it to finish or stop it, or train into another --out ({hint})")

    def check(self) -> None:
        """Raise :class:`RunLocked` if a living process holds the lock (takes nothing)."""
        info = self.owner()
        if info is not None and not self.held and self._stale(info) is None:
            raise self._refusal(info)

    # ------------------------------------------------------------------ taking, giving back
    def acquire(self) -> "RunLock":
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500], "token": token}
        for _ in range(5):  # each round either takes the lock, is refused, or removed a stale one
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info, ident = self._read()
                for _ in range(_REREADS):  # created but not yet written (its owner is between open and write):
                    if info != {} or self._stale(info, ident) is not None:  # read again, to name the owner
                        break
                    time.sleep(_REREAD_S)
                    info, ident = self._read()
                if info is None:
                    continue  # released meanwhile
                why = self._stale(info, ident)
                if why is None:
                    raise self._refusal(info) from None
                self._remove_stale(info, why, ident)
                continue  # removed: take it next round; put back (not the one judged): judge it then
            try:
                os.write(fd, (json.dumps(me) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.token = token
            return self
        raise RunLocked(f"run folder {str(self.folder)!r}: could not take its lock {str(self.path)!r} (other "
                        "processes keep taking it); make sure one training at a time uses this folder")

    def _judged_stale(self) -> None:
        """Called between judging a lock stale and moving it aside: a no-op, where tests put what
        another process may do in that moment (remove the stale lock and take a fresh one)."""

    def _remove_stale(self, info: dict, why: str, ident: Optional[tuple]) -> None:
        """Move the stale lock aside (an atomic rename: of several processes doing this at once,
        one wins) and delete it, unless what was moved is not the lock judged stale (another
        process removed that one and took a fresh lock meanwhile): that one is put back. The
        file moved is compared by identity (inode, mtime, size: ``ident``, taken when it was
        judged) in every case, an empty or garbled lock included, and by content where it had one."""
        self._judged_stale()
        aside = self.folder / f".{LOCK_NAME}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process removed it first
        moved = RunLock(self.folder)
        moved.path = aside
        moved_info, moved_ident = moved._read()
        if ident is None or moved_ident != ident or (info and moved_info != info):
            try:  # put it back, unless a new lock was created meanwhile (then its owner goes on)
                os.link(aside, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: move it back
                try:
                    os.rename(aside, self.path)
                except OSError:
                    pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self._say(f"note: taking over the lock of run folder {str(self.folder)!r}: {why} (it ended without "
                  "releasing it, e.g. killed)")

    def release(self) -> None:
        """Delete the lock file if it is still ours (no-op when not held)."""
        if not self.held:
            return
        info = self.owner()
        if info and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
