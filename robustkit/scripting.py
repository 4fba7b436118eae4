"""Helpers for scripts that drive robustkit in-process (the recipes in train/ and eval/, benchmarks)."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator


def run_cli(args: list[str], quiet: bool = False) -> int:
    """``robustkit ARGS`` in this process (no Python/torch start-up per call); returns its exit status.

    Errors are printed by the CLI as usual; ``quiet`` swallows stdout (tables) but not errors.
    """
    from robustkit.cli import app

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
            result = app(args, standalone_mode=False)
    except SystemExit as exc:  # typer.Exit from a RobustkitError, already printed
        return int(exc.code or 0)
    except Exception as exc:  # a usage error (bad flag) from the CLI parser
        if not hasattr(exc, "format_message"):
            if type(exc).__name__ == "Exit":
                return int(getattr(exc, "exit_code", 0))
            raise
        print(f"error: robustkit {args[0]}: {exc.format_message()}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads inside the block (None: leave torch alone), then restore.

    Tiny batches gain nothing from threads, and on shared CPU cores OpenMP's spin-waiting made a 16-image
    step of wrn-10-1 30x slower with 2 threads than with 1 (2.4 s vs 0.08 s, measured here).
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
