"""The one exception type users see.

Anything that is the user's input or environment (a missing folder, a malformed epsilon range, a
checkpoint that is not ours) raises :class:`RobustkitError` with a message that says what is wrong
and how to fix it. The CLI prints it as one line and exits with status 2; no traceback.
Bugs stay ordinary exceptions, with tracebacks.
"""

import contextlib
import signal
import threading


class RobustkitError(Exception):
    """A user-facing error: one line, what is wrong and how to fix it."""

    exit_code = 2
    every_rank = True   # under torchrun: printed by every rank that raises it (False: by rank 0 only)


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The gist of an exception from a library, for a one-line message: its message's first line, cut at
    ``limit`` characters (None: whole); its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


@contextlib.contextmanager
def sigterm_interrupts(ignore_after_an_error: bool = False):
    """SIGTERM (e.g. a scheduler stopping the job) behaves like Ctrl-C inside the block: the job's cleanup
    (a training checkpoint, an evaluation's finished cells) runs, then it stops. Only the main thread can
    set signal handlers; elsewhere the block runs unchanged.

    ``ignore_after_an_error``: when the block ends by an exception, SIGTERM is ignored from then on instead of
    getting its old handler back (killing the process), with no moment in between: a torchrun worker that is
    stopping (another rank died, or SIGTERM came) must still say where the run stands, and torchrun sends SIGTERM
    to the remaining ranks as soon as one has exited (on a loaded machine that signal killed rank 0 before its
    last words, ~1 launch in 6)."""
    def _term(signum, frame):
        raise KeyboardInterrupt
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _term) if main else None
    try:
        yield
    except BaseException:
        if old is not None and ignore_after_an_error:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            old = None
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
