"""Output folders: one run at a time, written as one unit.

:func:`output_lock` takes an exclusive lock on an output folder for the duration of a run. The
lock is an ``flock`` on a hidden file next to the folder (``.NAME.ravl-lock``), so it is released
by the kernel when the process ends, however it ends: a lock whose process is gone is recovered
by the next run. The file records the holder (command, pid, host, start time), which the error
of a second run names. Locks are re-entrant inside one process (``ravl mitigate`` locks its
folder and calls :func:`ravl.finetune`, which locks it too).

:func:`staged_output` writes a run's files into a sibling staging folder and swaps it into place
when the run succeeds, with an atomic exchange of the two folders where the platform has one
(Linux ``renameat2(RENAME_EXCHANGE)``), else two renames with recovery: a SIGKILL at any moment
leaves either the previous complete output or the new one, never a mix (discovery.json of one
run and report.html of another). It refuses a folder holding files ravl did not write.

:func:`check_output_dir` and :func:`check_output_file` catch an ``--out`` that is a file, a
``--json`` that is a folder, or a location that cannot be written, before any work starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import functools
import inspect
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ravl.exceptions import InvalidParameterError, RavlError

__all__ = ["OutputLockedError", "output_lock", "locks_output", "staged_output", "check_output_dir",
           "check_output_file", "OUTPUT_MARKER"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: A file every staged output folder holds, marking it as written by ravl (safe to replace).
OUTPUT_MARKER = ".ravl-output"

_HELD: dict[str, list] = {}  # lock path -> [open file, depth] for re-entrancy inside this process


class OutputLockedError(RavlError, OSError):
    """Another run is writing the same output folder."""


def _lock_path(folder: Path) -> Path:
    folder = folder.resolve()
    return folder.parent / f".{folder.name or 'root'}.ravl-lock"


def _describe(info: dict) -> str:
    return (f"`{info.get('command', '?')}` (pid {info.get('pid', '?')} on {info.get('host', '?')}, started "
            f"{info.get('started', '?')})")


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (the output of ``command``) while the block runs.

    Raises:
        OutputLockedError: When another process holds the lock; the message names it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    path = _lock_path(Path(folder))
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        try:
            info = json.loads(fh.read() or "{}")
        except ValueError:
            info = {}
        fh.close()
        raise OutputLockedError(
            f"{Path(folder)} is being written by another run: {_describe(info)}. Wait for it to finish, or use "
            "another output folder.") from None
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(info))
    fh.flush()
    _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        _HELD.pop(key, None)
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def locks_output(param: str, command: str) -> Callable[[F], F]:
    """Decorator: the function runs with :func:`output_lock` held on its ``param`` argument's folder.

    Example:
        >>> @locks_output("out_dir", "my_writer")
        ... def my_writer(data, out_dir):
        ...     ...
    """

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            folder = sig.bind(*args, **kwargs).arguments[param]
            with output_lock(folder, command):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def check_output_dir(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """``folder`` as a Path, after checking that it is (or can become) a writable folder.

    Raises:
        InvalidParameterError: It is a file, or its first existing ancestor is not writable.
    """
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise InvalidParameterError(f"{flag} {p} is a file; give a folder (it is created if missing).")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{flag} {p} cannot be written: {probe} is not a writable folder. Choose a "
                                    "location you can write to.")
    return p


def check_output_file(path: str | os.PathLike, flag: str = "--json") -> Path:
    """``path`` as a Path, after checking that a file can be written there.

    Raises:
        InvalidParameterError: It is a folder, or its folder cannot be written.
    """
    p = Path(path)
    if p.is_dir():
        raise InvalidParameterError(f"{flag} {p} is a folder; give a file name, e.g. {p / 'results.json'}.")
    check_output_dir(p.parent if str(p.parent) else ".", flag)
    return p


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    res = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return res == 0


def _recover(folder: Path) -> None:
    """Clean up after a run killed while writing ``folder`` (called with the folder's lock held).

    Finishes a swap interrupted between its two renames (the fallback path) and removes staging
    folders of dead runs.
    """
    if not folder.parent.exists():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"))
    if not folder.exists() and olds and (olds[-1] / OUTPUT_MARKER).exists():
        os.replace(olds[-1], folder)
        logger.warning("Restored %s from an interrupted update (%s).", folder, olds[-1].name)
        olds = olds[:-1]
    for leftover in [*olds, *folder.parent.glob(f".{folder.name}.staging-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


#: Files a report folder holds (an output of an earlier ravl without the marker is recognised by them).
_REPORT_FILES = re.compile(r"^(discovery|evaluation|timings|verify)\.json$|^report\.html$|^[a-z_]+(_\d+)?\.png$")


def _is_ravl_output(folder: Path) -> bool:
    """Empty, marked as written by ravl, or holding only the files of a ravl report folder."""
    names = [p.name for p in folder.iterdir()]
    return not names or OUTPUT_MARKER in names or all(_REPORT_FILES.match(n) for n in names)


@contextlib.contextmanager
def staged_output(folder: str | os.PathLike, *, what: str = "this command") -> Iterator[Path]:
    """Write a run's files into a staging folder that replaces ``folder`` as a unit on success.

    Yields the staging folder; write every output file there. When the block raises, the staging
    folder is removed and ``folder`` is left as it was. Call it with :func:`output_lock` held on
    ``folder``.

    Raises:
        InvalidParameterError: ``folder`` exists and holds files ravl did not write (nothing of
            the user's is ever replaced), or is a file.
    """
    folder = check_output_dir(folder).resolve()
    _recover(folder)
    if folder.exists() and not _is_ravl_output(folder):
        raise InvalidParameterError(
            f"--out {folder} already holds files that ravl did not write; {what} replaces its output folder as a "
            "whole, so give an empty or new folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        yield stage
        (stage / OUTPUT_MARKER).write_text(json.dumps({"pid": os.getpid()}) + "\n", encoding="utf-8")
        os.chmod(stage, 0o777 & ~_umask())
        if not folder.exists():
            os.replace(stage, folder)
        elif _exchange(stage, folder):
            shutil.rmtree(stage, ignore_errors=True)  # now the previous output
        else:
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
            os.replace(stage, folder)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
