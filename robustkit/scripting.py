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


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N), 1 <= I <= N; None -> (1, 1). Item k (0-based, in the listed order) of a
    grid belongs to shard (k mod N) + 1: a fixed split that needs no coordination between jobs."""
    from robustkit.errors import RobustkitError

    if text is None:
        return 1, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise RobustkitError(f"--shard takes I/N, e.g. 3/16 (this job's share of 16), got {text!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise RobustkitError(f"--shard {text}: need 1 <= I <= N, e.g. --shard 1/{max(n, 1)}")
    return i, n


def in_shard(k: int, shard: tuple[int, int]) -> bool:
    i, n = shard
    return k % n == i - 1
