"""A batch's first case read in a child process while the batch starts.

``discovery score`` begins by importing torch and the analysis' libraries (about 1.5 s on
the 2-core machine) and only then reads its first case (about 1 s for a 300-slice series
and its mask): one after the other, each on one core.  :func:`start_read_ahead` forks a
child *before* those imports.  The child finds the input's cases and reads the first one
exactly as the batch would (:func:`data_tools.cases.read_case` with a
:class:`~discovery.batch.manifest.HashingReader`), copies each large array into an
anonymous memory file (``memfd``), one at a time so that it never holds two copies of the
scan, and sends those files with the small rest (pickled: geometry, metadata, the
annotation's facts, the files' digests) over a Unix socket.  :meth:`ReadAhead.take` maps the
files: the arrays are not copied again, they are writable (the case file's CT is flattened
in place), and each array's memory goes back to the system with it.

Used only where it is safe and useful: on Linux (``fork``, ``memfd_create``), by one process
scoring (``--workers 1``, no cluster: pool workers read their own cases), before anything
has started threads.  Whatever goes wrong in the child (an input error, no memory for the
hand-over, the child killed) is not reported from there: :meth:`ReadAhead.take` answers
None and the batch reads the case itself, so that an error, its message and its log line
are exactly those of a batch without a read-ahead.  ``DISCOVERY_READ_AHEAD=0`` turns it
off.  While the child reads, the two processes together hold the parent's imports and the
child's case (measured in docs/benchmarks/speed.md).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.cases import CaseSpec, LoadedCase, discover_cases, read_case
from data_tools.memory import unpooled_buffers
from data_tools.volume import Mask, Volume
from discovery.batch.manifest import HashingReader

__all__ = ["ReadAhead", "start_read_ahead", "read_ahead_available"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
#: arrays smaller than this travel inside the pickle (the affine, empty masks)
_IN_BAND_BYTES = 1 << 20


def read_ahead_available() -> bool:
    """Whether this platform can read ahead (Linux: ``fork``, ``memfd_create`` and passing
    file descriptors over a Unix socket) and ``DISCOVERY_READ_AHEAD`` does not say ``0``."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
            and os.environ.get("DISCOVERY_READ_AHEAD", "1") != "0")


@dataclass
class ReadAhead:
    """The child reading a batch's first case (module docstring).

    Attributes
    ----------
    input_path, layout :
        What the cases were found from, as :func:`data_tools.cases.discover_cases` takes them.
    specs : list of CaseSpec
        The input's cases, found once (the batch uses them instead of finding them again).
    spec : CaseSpec
        The case the child reads: the first whose input was found without a problem.
    pid, sock :
        The child and the parent's end of the socket to it (0 and None once closed).
    """

    input_path: str
    layout: str
    specs: list[CaseSpec]
    spec: CaseSpec
    pid: int
    sock: socket.socket | None
    #: whether :meth:`take` handed the child's case over (False until then, and when the
    #: batch had to read it itself)
    delivered: bool = False

    def specs_for(self, input_path, layout: str) -> list[CaseSpec] | None:
        """The cases found, if they were found from this *input_path* and *layout*."""
        same = str(input_path) == self.input_path and layout == self.layout
        return self.specs if same else None

    def take(self, spec: CaseSpec, reader: HashingReader) -> LoadedCase | None:
        """The case the child read, if it is *spec* and the child delivered it; the digests
        of the files it read are added to *reader* (so that ``reader.input_hash()`` is the
        batch's own).  None otherwise: the caller reads the case itself.  Once only."""
        if self.sock is None or spec.case_id != self.spec.case_id:
            return None
        try:
            # as read_case does: leaves glibc's mmap threshold fixed, so that later large
            # temporaries go back to the system when freed (data_tools.memory)
            with unpooled_buffers():
                got = _receive(self.sock)
        except Exception as exc:  # noqa: BLE001 -- whatever it is, the batch reads the case
            log.info("read-ahead of case %s not used (%s); reading it here", spec.case_id,
                     type(exc).__name__)
            got = None
        finally:
            self.close()
        if got is None:
            log.info("read-ahead of case %s not delivered; reading it here", spec.case_id)
            return None
        case, digests = got
        reader.digests.update(digests)
        self.delivered = True
        log.info("case %s read ahead in a child process", spec.case_id)
        return case

    def close(self) -> None:
        """Stop the child if it still runs and reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


def start_read_ahead(input_path, results_dir, *, layout: str = "auto",
                     max_bytes: int | None) -> ReadAhead | None:
    """Find the input's cases and fork a child that reads the first (module docstring).

    Call before torch or any library that starts threads is imported.  None when reading
    ahead is not available (:func:`read_ahead_available`), when this process runs other
    Python threads, when the input's cases cannot be found here (the batch then reports
    why) or none was found without a problem.

    Parameters
    ----------
    input_path, layout :
        As :func:`discovery.batch.score.score_folder` takes them.
    results_dir : path
        The batch's results folder (left out of the inputs' hashes, as the batch does).
    max_bytes : int or None
        The batch's limit on a scan's float32 size.
    """
    if not read_ahead_available() or threading.active_count() > 1:
        return None                # a thread could hold a lock the child would need
    try:
        specs = discover_cases(input_path, layout=layout)
    except Exception:  # noqa: BLE001 -- the batch finds them again and reports the problem
        return None
    first = next((s for s in specs if not s.problem), None)
    if first is None:
        return None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        parent.close()
        _child(child, first, Path(results_dir), max_bytes)
    child.close()
    return ReadAhead(str(input_path), layout, specs, first, pid, parent)


def _child(sock: socket.socket, spec: CaseSpec, results_dir: Path, max_bytes) -> None:
    """Read *spec*, send it, exit without running the parent's exit handlers."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the parent
        _die_with_parent()
        logging.disable(logging.CRITICAL)              # the parent logs (module docstring)
        reader = HashingReader(spec, results_dir, max_bytes)
        case = read_case(spec, max_bytes=max_bytes, read=reader, integer_hu=True)
        arrays, header = _split(case)
        del case
        fds = []
        while arrays:                  # one copy at a time: the array goes once it is sent
            fds.append(_to_memfd(arrays.pop(0)))
        header["digests"] = dict(reader.digests)
        data = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
        socket.send_fds(sock, [_LENGTH.pack(len(data))], fds)
        sock.sendall(data)
    except BaseException:  # noqa: BLE001 -- the parent reads the case itself (docstring)
        code = 1
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent exits (``prctl(PR_SET_PDEATHSIG)``):
    a parent stopped during its imports leaves no child reading on."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:          # the parent is already gone
        os._exit(1)


def _split(case: LoadedCase) -> tuple[list[np.ndarray], dict]:
    """The large arrays of *case* (to go as memory files) and the rest, pickled with
    placeholders ``("memfd", k, dtype, shape)`` for them."""
    arrays: list[np.ndarray] = []

    def part(vol: Volume | None):
        if vol is None:
            return None
        arr = vol.array
        if arr.nbytes >= _IN_BAND_BYTES:
            arrays.append(arr)
            arr = ("memfd", len(arrays) - 1, arr.dtype.str, arr.shape)
        return (arr, vol.affine, dict(vol.metadata))

    header = {"volume": part(case.volume), "mask": part(case.mask),
              "nodules": case.nodules, "mask_source": case.mask_source}
    return arrays, header


def _to_memfd(arr: np.ndarray) -> int:
    """An anonymous memory file holding *arr*'s bytes (C order)."""
    arr = np.ascontiguousarray(arr)
    fd = os.memfd_create("discovery-read-ahead", os.MFD_CLOEXEC)
    os.ftruncate(fd, arr.nbytes)
    with mmap.mmap(fd, arr.nbytes) as mm:
        mm[:] = memoryview(arr).cast("B")
    return fd


def _receive(sock: socket.socket) -> tuple[LoadedCase, dict] | None:
    """The child's case and digests, or None when it sent nothing (it failed)."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, 8)
    try:
        if len(msg) < _LENGTH.size:
            return None
        (n,) = _LENGTH.unpack(msg)
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(min(n - len(data), 1 << 20))
            if not chunk:
                raise EOFError("the read-ahead child stopped mid-message")
            data += chunk
        header = pickle.loads(data)
        mapped = [_from_memfd(fd) for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)

    def part(entry, cls):
        if entry is None:
            return None
        arr, affine, metadata = entry
        if isinstance(arr, tuple):
            _tag, k, dtype, shape = arr
            arr = np.frombuffer(mapped[k], dtype=np.dtype(dtype)).reshape(shape)
        return cls(arr, affine, metadata)

    case = LoadedCase(part(header["volume"], Volume), part(header["mask"], Mask),
                      tuple(header["nodules"]), header["mask_source"])
    return case, header["digests"]


def _from_memfd(fd: int) -> mmap.mmap:
    """A writable shared mapping of the whole memory file *fd* (it stays valid once *fd* is
    closed, and is unmapped when the last array on it goes)."""
    return mmap.mmap(fd, os.fstat(fd).st_size)
