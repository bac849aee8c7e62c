"""The profile lock: one process at a time writes a profile's artifacts (``run``, ``train``,
``report``). See docs/method/runner.md.

``runs/<profile>/.lock`` is locked with ``fcntl.flock`` (an exclusive lock the kernel gives to
exactly one open file and drops when its process ends, however it ends: no stale lock survives a
crash, and a pid reused by an unrelated process does not matter). The file holds the holder's pid,
the process start time (``/proc/<pid>/stat``; pid + start time name one process) and the command,
for the message a refused second run gets. The file is removed on release; a process that locked a
file which was meanwhile removed or replaced tries again, so two holders never coexist.

Notebook kernels outlive a runner killed with ``kill -9`` by a few seconds (until they notice
their parent is gone). Each kernel of a run holds a shared lock on ``.kernel.lock`` next to the
lock (:func:`hold_kernel_lock`, called by the notebooks' ``setup``); a new holder of the profile lock
waits for every such kernel to end (up to ``kernel_wait_s``) before it writes anything.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

#: environment variable naming the kernel lock file of the run that started the kernel
KERNEL_LOCK_ENV = "RK_KERNEL_LOCK"
_kernel_fd: Optional[int] = None


class RunLocked(RuntimeError):
    """Another process holds the lock of the same profile."""


def process_start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    as a string; None where there is no ``/proc`` or no such process. With the pid it names one
    process: a pid reused later has another start time."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _read_info(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class ProfileLock:
    """``with ProfileLock(path, profile, command):`` holds the lock or raises :class:`RunLocked`
    at once naming the holder (pid, start time, command) and the lock file."""

    def __init__(self, path: str | os.PathLike, profile: str, command: str = "run", kernel_wait_s: float = 30.0):
        self.path, self.profile, self.command = Path(path), profile, command
        self.kernel_path = self.path.with_name(".kernel.lock")
        self.kernel_wait_s = float(kernel_wait_s)
        self.fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "ProfileLock":
        if fcntl is None:  # pragma: no cover
            raise RunLocked("the profile lock needs fcntl (a POSIX system)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunLocked(f"cannot create the folder of the lock {self.path} ({exc.strerror})") from None
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunLocked(f"cannot open the lock {self.path} of profile {self.profile!r} ({exc.strerror})") from None
            if not _flock(fd, fcntl.LOCK_EX):
                info = _read_info(fd)
                os.close(fd)
                raise RunLocked(
                    f"another run of profile {self.profile!r} is in progress (pid {info.get('pid', '?')}, "
                    f"{info.get('command', '?')}, started {info.get('started', '?')}; lock {self.path}); "
                    "wait for it to finish, or stop it first")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # removed or replaced by the holder that just released it: try again
                os.close(fd)
                continue
            prev = _read_info(fd)
            if prev.get("pid"):
                print(f"note: taking over the stale lock {self.path} of pid {prev.get('pid')} "
                      f"({prev.get('command', '?')}, started {prev.get('started', '?')}): that process no longer "
                      "holds it", file=sys.stderr)
            me = os.getpid()
            info = {"pid": me, "pid_start": process_start_time(me), "command": self.command,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            self.fd = fd
            break
        else:  # pragma: no cover - the file replaced 100 times in a row
            raise RunLocked(f"could not take the lock {self.path} of profile {self.profile!r}")
        try:
            self._wait_for_kernels()
        except BaseException:
            self._release()
            raise
        os.environ[KERNEL_LOCK_ENV] = str(self.kernel_path)
        return self

    def _wait_for_kernels(self) -> None:
        """Wait until no kernel of an earlier run holds the kernel lock."""
        kfd = os.open(self.kernel_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline, said = time.monotonic() + self.kernel_wait_s, False
            while not _flock(kfd, fcntl.LOCK_EX):
                if time.monotonic() > deadline:
                    raise RunLocked(f"a notebook kernel of an earlier run of profile {self.profile!r} is still "
                                    f"running after {self.kernel_wait_s:g} s (it holds {self.kernel_path}); stop it first")
                if not said:
                    print(f"note: waiting for a notebook kernel of an earlier run of profile {self.profile!r} "
                          "to end", file=sys.stderr)
                    said = True
                time.sleep(0.1)
            fcntl.flock(kfd, fcntl.LOCK_UN)
        finally:
            os.close(kfd)

    def _release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: the next holder re-checks the inode
        finally:
            os.close(fd)  # drops the lock

    def __exit__(self, *exc: Any) -> None:
        if os.environ.get(KERNEL_LOCK_ENV) == str(self.kernel_path):
            os.environ.pop(KERNEL_LOCK_ENV, None)
        self._release()


def hold_kernel_lock() -> None:
    """In a notebook kernel started by a run: hold a shared lock on the run's kernel lock file for
    the kernel's life (the next run waits for it to end). Nothing outside a run."""
    global _kernel_fd
    path = os.environ.get(KERNEL_LOCK_ENV)
    if not path or fcntl is None or _kernel_fd is not None:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    fcntl.flock(fd, fcntl.LOCK_SH)
    _kernel_fd = fd


def release_kernel_lock() -> None:
    """Give up the lock :func:`hold_kernel_lock` took (a notebook executed inside another
    process, e.g. by a test's in-process engine, ends without its process ending)."""
    global _kernel_fd
    if _kernel_fd is not None:
        try:
            os.close(_kernel_fd)  # closing the descriptor releases its flock
        finally:
            _kernel_fd = None
