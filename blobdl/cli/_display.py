"""What the command line shows: a progress bar, plain lines or JSON lines; warnings, errors."""

from __future__ import annotations

import argparse
import base64
import errno
import io
import json
import logging
import os
import select
import stat
import sys
from typing import IO, Any

from ..batch._scheduler import BatchEvent
from ..errors import EXIT_LOCAL, EXIT_OK, BlobdlError
from ..events import DownloadResult, Event, Failed, Finished, Progress, Started, event_record
from ..processes._signals import held, interrupted, whole

# The standard streams the caller gave closed (``open_standard_streams``): /dev/null now.
_CLOSED: set[str] = set()


def open_standard_streams() -> None:
    """A standard stream closed by the caller (``blobdl URL >&-``) is /dev/null instead.
    Python has no ``sys.stdout`` then, and the free descriptor would be the next file
    opened: a partial or a lock that a child's stray output would write into."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:  # EBADF: closed; the lower ones are open, so this one is the lowest free
            _CLOSED.add(name)
            os.dup2(devnull := os.open(os.devnull, os.O_RDWR), fd)
            if devnull != fd:
                os.close(devnull)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - for the process


def given_closed(name: str) -> bool:
    """Whether the caller gave the standard stream ``name`` closed (it reads as empty)."""
    return name in _CLOSED


def show_warnings(quiet: bool = False) -> None:
    """Library warnings (resume decisions, kept partial files) as one line each on stderr;
    none when ``quiet`` (it prints errors only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("blobdl: warning: %(message)s"))
    logger = logging.getLogger("blobdl")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def quiet_dask() -> None:
    """Dask's own log lines (reconnecting, closing, a worker gone) are not ours to show: what
    matters comes as one ``blobdl: error:`` line. Without Dask, nothing to quiet."""
    try:
        import distributed  # noqa: F401 - its import sets up the loggers quieted here
    except ImportError:
        return
    # Dask gives some of its loggers handlers of their own (distributed.client has one).
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
    # Its client's event loop is Tornado's, which logs a callback's exception itself (Dask's
    # ``sync`` raises one when Ctrl-C lands just as a question to the scheduler starts).
    for name in ["distributed", *names, "tornado.application"]:
        logger = logging.getLogger(name)
        logger.handlers[:] = [logging.NullHandler()]
        logger.propagate = False


def fail(display: Display, exc: BaseException, code: int) -> int:
    """Say the failure (its JSON record too, if no event said it); a signal meanwhile is
    the stop being said, or one after the outcome: dropped, never a second line."""
    with held(drop=True):
        display.close()
        if display.mode == "json" and not display.failed:  # e.g. bad settings: no event yet
            failed_line(str(exc), code)
        error(exc)
    return code


def failed_line(message: str, code: int) -> None:
    """The ``failed`` JSON line of a failure that no download's event said."""
    json_line(sys.stdout, {"event": "failed", "url": "", "path": "", "error": message,
                           "exit_code": code})  # fmt: skip


def error(exc: BaseException) -> None:
    """The one error line (a signal meanwhile is dropped, as in ``fail``)."""
    with held(drop=True):
        say(f"blobdl: error: {exc}")


def failure(display: Display, exc: BlobdlError | KeyboardInterrupt) -> int:
    """A command's failure shown as one line; its exit code (Ctrl-C or SIGTERM:
    interrupted, 130)."""
    error = interrupted(exc) if isinstance(exc, KeyboardInterrupt) else exc
    return fail(display, error, error.exit_code)


def json_line(stream: IO[str], record: dict[str, Any]) -> None:
    text = json.dumps(record, separators=(",", ":"))
    if "\\ud" in text:  # maybe a lone surrogate: a byte of a path that is not UTF-8
        text = json.dumps(utf8_record(record), separators=(",", ":"))
    _write(stream, text + "\n")


def utf8_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as strict JSON parsers take it: a text holding bytes that are not UTF-8
    (``os.fsdecode``'s lone surrogates, which Rust's serde_json and others refuse) is shown
    with U+FFFD for each, and given exactly beside it as ``<field>_b64``, its bytes in
    base64."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            value = utf8_record(value)
        elif isinstance(value, str) and not _utf8(value):
            raw = value.encode("utf-8", "surrogateescape" if _escaped(value) else "surrogatepass")
            value = raw.decode("utf-8", "replace")
            out[f"{key}_b64"] = base64.b64encode(raw).decode("ascii")
        out[key] = value
    return out


def _escaped(text: str) -> bool:
    """Whether ``text``'s lone surrogates are all bytes ``os.fsdecode`` could not decode."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def say(line: str) -> None:
    _write(sys.stderr, one_line(line) + "\n")


def tell(line: str) -> None:
    """A line of a command's output (stdout), as robust as ``say``."""
    _write(sys.stdout, one_line(line) + "\n")


def write(stream: IO[str], text: str) -> None:
    """Text as it is (argparse's help: lines already), as robust as ``say``."""
    _write(stream, text)


def one_line(text: str) -> str:
    """``text`` as one line: a line break or a terminal escape in a name we echo (a path, a
    URL, a server's words) is shown escaped (``\\n``, ``\\x1b``), so it can neither split
    our line nor forge another one, nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def _write(stream: IO[str], text: str) -> None:
    """Write all of ``text``, now. A failed write never costs the download: the stream is
    silenced and the download goes on (``_broken``).

    Written to the descriptor, not through ``stream``: a stream another process made
    non-blocking (it shares the pipe or terminal) refuses a write while its reader is behind,
    and Python then drops the line (silently if unbuffered, ``PYTHONUNBUFFERED``); we wait
    for the reader instead, as a blocking stream makes us. A stream that is no file (a
    test's capture) is written as it is.

    A line is one step (``whole``): a signal meanwhile (one raised at once in a callback of
    ours, see ``callers``) stops the run once the line is whole, never leaving half a JSON
    line that the next one is glued to; one that is already being handled is not raised
    again after each of its own lines. The failure's own lines wait for the reader too."""
    with whole():
        _write_line(stream, text)


def _write_line(stream: IO[str], text: str) -> None:
    try:
        try:
            fd = stream.fileno()
        except io.UnsupportedOperation:
            stream.write(text)
            stream.flush()
            return
        _flush(stream, fd)  # what the stream holds goes first (a bar tqdm drew through it)
        _write_all(fd, _encoded(text, getattr(stream, "encoding", None)))
    except (OSError, ValueError) as exc:  # ValueError: closed
        _broken(stream, exc)


def _encoded(text: str, encoding: str | None) -> bytes:
    """``text`` in the stream's encoding, what it cannot hold escaped (``\\u65e5``), as
    Python writes stderr: a stdout told to be ASCII (``PYTHONIOENCODING``, a Latin-1
    locale) still gets the whole line."""
    return text.encode(encoding or "utf-8", "backslashreplace")


def _flush(stream: IO[str], fd: int) -> None:
    """``stream.flush()``, waiting while ``fd`` is full (its buffer keeps what is unwritten)."""
    while True:
        try:
            stream.flush()
            return
        except BlockingIOError:
            _wait_for_room(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd``, waiting while it is full (EAGAIN)."""
    rest = memoryview(data)
    while rest:
        try:
            rest = rest[os.write(fd, rest) :]
        except BlockingIOError:
            _wait_for_room(fd)


def _wait_for_room(fd: int) -> None:
    """Until ``fd`` takes a write (or fails one: an error or a hangup ends the wait too, and
    the next write says which)."""
    ready = select.poll()
    ready.register(fd, select.POLLOUT)
    ready.poll()


def _broken(stream: IO[str], exc: Exception) -> None:
    """``stream`` refused a write: silence it. On stdout, unless its reader went away
    (``| head``), the report was lost (a full disk): said once, and the exit code tells."""
    lost = _lost(stream, exc)  # asked first: silenced, the stream is /dev/null
    _silence(stream)
    if lost is not None:
        _stdout.lose(lost)


def _lost(stream: IO[str], exc: Exception) -> OSError | None:
    """The error that lost a line of stdout's report; None for another stream, a closed
    one, or a reader that went away."""
    if stream is not sys.stdout or not isinstance(exc, OSError):
        return None
    return None if reader_went_away(exc, terminal=_a_terminal(stream)) else exc


def reader_went_away(exc: OSError, *, terminal: bool) -> bool:
    """A failed write that means the reader quit, not that what it was given was lost:
    a pipe or socket closed by its reader (``| head``), a terminal hung up (EIO then).
    ENOSPC, EFBIG, EDQUOT, a disk's EIO: the report is lost."""
    return exc.errno in (errno.EPIPE, errno.ECONNRESET) or (terminal and exc.errno == errno.EIO)


def _a_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` may be a terminal: a character device. Not ``isatty``: a hung-up
    terminal is no tty to it any more. A file on a disk is never a character device."""
    try:
        return stat.S_ISCHR(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


class _Stdout:
    """What became of standard output in this run; written only by this module."""

    def __init__(self) -> None:
        self.lost = False  # a line of the report went nowhere

    def lose(self, exc: OSError) -> None:
        if not self.lost:
            self.lost = True
            reason = exc.strerror or exc
            say(f"blobdl: error: could not write to standard output: {reason} (the report "
                "is lost from here on; the downloads go on, their files whole)")  # fmt: skip


_stdout = _Stdout()


def watch_stdout() -> None:
    """A run starts: its stdout has lost nothing yet."""
    global _stdout
    _stdout = _Stdout()


def with_lost_output(code: int) -> int:
    """The run's exit code: a success whose report stdout lost is a local failure (5); a
    failure keeps its own code, which says more."""
    return EXIT_LOCAL if code == EXIT_OK and _stdout.lost else code


def _silence(stream: IO[str]) -> None:
    """Point the stream's descriptor at /dev/null: what is still buffered (and anything
    written later, by tqdm or the interpreter's exit flush) goes nowhere instead of raising."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
        stream.flush()
    except (OSError, ValueError):
        pass


class Display:
    """Shows events: a tqdm bar on a TTY, JSON lines with --json, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bar: Any = None
        self.failed = False
        self.dead = False  # the bar's terminal went away
        self.done: dict[str, int] = {}  # with ``tally``: bytes on disk, per download
        self.ended: set[int] = set()  # with -i --json: the items whose last line is written
        self.lines: tuple[int, ...] = ()  # with -i: the manifest line of each item

    def item_event(self, batch_event: BatchEvent) -> None:
        """With -i --json: JSON lines carry the item's index and its manifest line. Nothing
        else is drawn per item: without --json the batch is given no callback (its seats
        send no events)."""
        event = batch_event.event
        self.failed = self.failed or isinstance(event, Failed)
        if self.mode != "json":
            return
        last = isinstance(event, Finished | Failed)
        # The line written and noted as one step: a stop that cut this callback short before
        # the line has it told again (``Outcomes.cut``), and one after it must not repeat it.
        with whole():
            if last and batch_event.item in self.ended:
                return
            index = batch_event.item
            line = {"line": self.lines[index]} if index < len(self.lines) else {}
            worker = {"worker": batch_event.worker} if batch_event.worker else {}
            json_line(sys.stdout, {"item": index, **line, **worker, **event_record(event)})
            if last:
                self.ended.add(batch_event.item)

    def event(self, event: Event) -> None:
        self.failed = self.failed or isinstance(event, Failed)
        if self.mode == "json":
            json_line(sys.stdout, event_record(event))
        elif self.mode == "bar" and not self.dead:
            try:
                if isinstance(event, Started):
                    self._open_bar(event.size, event.resumed)  # now: tqdm's clock starts with us
                elif isinstance(event, Progress):
                    self._draw(event)
            except (OSError, ValueError) as exc:  # the terminal went away: stop drawing, go on
                self.bar_broke(exc)

    def tally(self, key: str, event: Event) -> None:
        """Many downloads on one bar (opened by the command): ``key``'s bytes so far."""
        self.failed = self.failed or isinstance(event, Failed)
        if isinstance(event, Progress):
            self.done[key] = event.done
        elif isinstance(event, Finished):
            self.done[key] = event.result.size
        self.advance_to(sum(self.done.values()))

    def advance_to(self, done: int) -> None:
        """The bar (if one is drawn) at ``done`` bytes."""
        if self.bar is None:
            return
        try:
            self.bar.update(done - self.bar.n)
        except (OSError, ValueError) as exc:
            self.bar_broke(exc)

    def bar_broke(self, exc: Exception) -> None:
        """The bar's write failed (tqdm quiets a hung-up terminal's EIO itself): no more
        drawing; the download goes on."""
        self.dead, self.bar = True, None
        _broken(sys.stdout, exc)

    def _open_bar(self, total: int | None, initial: int) -> None:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: we fork after this point
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
            file=sys.stdout,
        )

    def _draw(self, progress: Progress) -> None:
        if self.bar is None:
            self._open_bar(progress.total, 0)
        self.bar.set_postfix_str(f"{progress.active} parts active", refresh=False)
        self.bar.update(progress.done - self.bar.n)

    def finished(self, result: DownloadResult) -> None:
        self.close()
        if self.mode in ("quiet", "json"):  # JSON: the finished event said it all
            return
        rate = result.size / result.elapsed if result.elapsed > 0 else 0.0
        say(
            f"{result.path}: {result.size} bytes in {result.elapsed:.1f} s "
            f"({rate / 1e6:.1f} MB/s, {result.parts} parts, {result.retries} retries, "
            f"{result.steals} steals)"
        )

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            try:
                bar.close()
            except (OSError, ValueError) as exc:
                self.bar_broke(exc)


def display_for(args: argparse.Namespace) -> Display:
    if args.json:
        return Display("json")
    if args.quiet:
        return Display("quiet")
    return Display("bar" if sys.stdout.isatty() else "plain")
