"""How the ``difflab`` command reports a failure: one line on stderr,

    difflab CMD: error: WHAT (naming the file or flag), and the fix

with exit code 2 for bad input (a flag, a config, a damaged or missing file) and 1 for the
environment (an OS error such as a read-only folder or a full disk, memory, a missing optional
package). ``difflab --debug CMD ...`` (or ``--debug`` anywhere) shows the traceback instead.
Anything else is a bug in difflab: its traceback is shown as it is.

Also here: the checks the commands make before any work (``--out`` empty or not writable,
memory for the samples asked for), so a mistake costs no training or sampling.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Optional

import torch
import yaml

__all__ = ["BAD_INPUT", "ENVIRONMENT", "describe", "check_out_paths", "available_memory", "check_memory",
           "NotEnoughMemory", "format_bytes"]

BAD_INPUT = 2
ENVIRONMENT = 1

# Argument names (argparse dests) that name an output file or folder.
OUT_ARGS = ("out", "save_tensor")
# Optional packages: import name -> the extra (pyproject.toml) that brings it.
EXTRAS = {"torch_fidelity": "inception", "torchvision": "inception", "diffusers": "peers"}
# torch's CPU and CUDA allocators, and MemoryError's own words.
_MEMORY = re.compile(r"out of memory|not enough memory|can't allocate memory|cannot allocate memory", re.I)
_ALLOC_BYTES = re.compile(r"(?:allocate|allocating) (\d+) bytes")
# An OS error inside another library's message (safetensors: "... (os error 28)").
_OS_ERROR = re.compile(r"os error (\d+)")


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _where(err: OSError, args) -> str:
    """The file an OS error is about: its own filename, else the command's --out."""
    if err.filename is not None:
        names = [str(err.filename)] + ([str(err.filename2)] if err.filename2 is not None else [])
        return " -> ".join(repr(n) for n in names)
    out = getattr(args, "out", None)
    return f"a file under --out {str(out)!r}" if out else "a file"


def _flag(err: OSError, args) -> str:
    """The output flag whose path the error is about (at, above or below it): "--out" etc."""
    if err.filename is None:
        return "--out" if getattr(args, "out", None) else "the output"
    p = Path(os.fsdecode(err.filename)).absolute()
    for dest in OUT_ARGS:
        value = getattr(args, dest, None)
        if value:
            v = Path(value).absolute()
            if p == v or p in v.parents or v in p.parents:
                return "--" + dest.replace("_", "-")
    return "the output"


def _os_error(err: OSError, args) -> tuple[int, str]:
    where, flag = _where(err, args), _flag(err, args)
    if isinstance(err, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        if err.errno is None or err.filename is None:  # difflab's own message
            return BAD_INPUT, str(err)
        return BAD_INPUT, f"{where}: {err.strerror.lower()}; check the path"
    if err.errno == errno.ENOSPC:
        return ENVIRONMENT, (f"no space left on device writing {where}; free some space on that disk or "
                             f"write elsewhere ({flag})")
    if err.errno == errno.EDQUOT:
        return ENVIRONMENT, f"disk quota exceeded writing {where}; free some space or write elsewhere ({flag})"
    if err.errno == errno.EROFS:
        return ENVIRONMENT, f"read-only file system: cannot write {where}; write elsewhere ({flag})"
    if isinstance(err, PermissionError):
        return ENVIRONMENT, (f"permission denied: {where}; choose a folder you can write to ({flag}) "
                             "or change its permissions")
    if err.errno is None:
        return ENVIRONMENT, str(err)
    return ENVIRONMENT, f"{(err.strerror or str(err)).lower()}: {where}"


class NotEnoughMemory(MemoryError):
    """Refused before any work by :func:`check_memory`: its message is the whole story."""


def _memory_error(err: BaseException) -> tuple[int, str]:
    if isinstance(err, NotEnoughMemory):
        return ENVIRONMENT, str(err)
    text = str(err)
    size = _ALLOC_BYTES.search(text)
    tried = f" (torch tried to allocate {format_bytes(int(size.group(1)))})" if size else ""
    gpu = isinstance(err, torch.OutOfMemoryError) or "CUDA" in text
    return ENVIRONMENT, (f"out of {'GPU ' if gpu else ''}memory{tried}; ask for less at once (--n, --batch-size) "
                         "or use a machine with more memory")


def _import_error(err: ImportError) -> tuple[int, str]:
    text = str(err)
    if "pip install" in text:  # difflab's own message names the package and the fix
        return ENVIRONMENT, text
    name = (err.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    fix = f"pip install 'difflab[{extra}]'" if extra else f"pip install {name or 'the missing package'}"
    return ENVIRONMENT, f"this needs the Python package {name or '?'} ({text}); install it: {fix}"


def describe(err: BaseException, args=None) -> Optional[tuple[int, str]]:
    """(exit code, one-line message) for an error the command reports as such, or None for a bug
    (shown with its traceback). ``args``: the parsed arguments, for the --out an OS error without
    a file name is about."""
    if isinstance(err, OSError):
        return _os_error(err, args)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return _memory_error(err)
    if isinstance(err, ImportError):
        return _import_error(err)
    if isinstance(err, yaml.YAMLError):  # difflab names its YAML files; this is the parser's own line
        return BAD_INPUT, " ".join(f"cannot parse YAML: {err}".split())
    if isinstance(err, (ValueError, TypeError, FloatingPointError)):
        return BAD_INPUT, str(err)
    if isinstance(err, RuntimeError) and _MEMORY.search(str(err)):
        return _memory_error(err)
    code = _OS_ERROR.search(str(err))
    if code is not None and int(code.group(1)) in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
        return _os_error(OSError(int(code.group(1)), os.strerror(int(code.group(1)))), args)
    if isinstance(err, RuntimeError) and "file write failed" in str(err):  # torch.save's writer
        return ENVIRONMENT, (f"writing {_where(OSError(), args)} failed ({str(err).splitlines()[0]}); "
                             "is the disk full or the folder read-only?")
    return None


# ----------------------------------------------------------------- checks before any work
def check_out_paths(args) -> None:
    """Each output argument (``--out``, ``--save-tensor``): not empty, and its folder (the first
    existing one above it) writable, before the command does any work. An empty ``--out`` was
    taken as "the default" by some commands; a read-only folder failed after the work."""
    for dest in OUT_ARGS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if not str(value).strip():
            raise ValueError(f"{flag} {value!r} is empty; name a file or folder (or drop the flag for its "
                             "default)")
        _check_writable(Path(value))


def _check_writable(path: Path) -> None:
    """PermissionError naming the first existing folder at or above ``path`` where a file could not
    be created (os.access: the real check is the write itself, which reports the same way)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.is_file():
        p = p.parent  # an existing output file: it is replaced by a file written beside it
    if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can be allocated now on ``device``: free GPU memory, or (CPU) the kernel's
    MemAvailable (within a cgroup v2 limit where one is set); None where it cannot be read."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used) if free is not None else int(limit) - used
    except (OSError, ValueError):
        pass
    return free


def check_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """MemoryError (exit 1) when ``need`` bytes -- a lower bound of what ``what`` holds at once --
    exceed what ``device`` has free, before any work; nothing when it fits or cannot be known."""
    free = available_memory(device)
    if free is not None and need > free:
        where = "GPU" if device.type == "cuda" else "this machine"
        raise NotEnoughMemory(f"{what} needs at least {format_bytes(need)} of memory at once, and {where} has "
                          f"{format_bytes(free)} free; {fix}")
