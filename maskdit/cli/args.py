"""The argparse toolkit of the ``maskdit`` command and the scripts in ``benchmarks/``: a parser whose usage errors
are one line, argument types that name what they want, and :func:`guarded`, which runs a command the way maskdit
does (one line and exit status 2 on bad input, 128 + N on signal N).

A leaf: only the standard library and :mod:`maskdit.errors` / :mod:`maskdit.files` at import time (torch loads
when a command runs, so Ctrl-C or SIGTERM during start-up ends with one line instead of a traceback, and
``--help`` answers at once), so every module may import it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maskdit.errors import ConfigError, Interrupted, MaskditError
from maskdit.files import check_parents


class UsageError(Exception):
    """A command line argparse cannot parse (printed as one line, exit status 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        unknown = "unrecognized arguments: "
        if message.startswith(unknown):  # argparse lists every word after the first unknown option; name only those
            options = [word for word in message[len(unknown):].split() if word.startswith("-")]
            message = f"unknown option(s) {', '.join(options)}" if options else message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def number(cast: type, ok: Any, wanted: str) -> Any:
    """An argparse ``type`` that parses ``cast(text)`` and refuses values failing ``ok`` (NaN always fails)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
non_negative_float = number(float, lambda v: 0 <= v < math.inf, "a non-negative number")
positive_float = number(float, lambda v: 0 < v < math.inf, "a positive number")
unit_float = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
ratio = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
strength = number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
#: The largest --guidance-scale: far past any useful guidance (DiT samples at 4), and short of the scales
#: whose arithmetic overflows float32 or turns every sample into NaN.
MAX_GUIDANCE_SCALE = 1000
guidance_scale_value = number(float, lambda v: 0 <= v <= MAX_GUIDANCE_SCALE,
                              f"a number in [0, {MAX_GUIDANCE_SCALE}] (1 = no guidance)")


def number_list(cast: type, ok: Any, wanted: str) -> Any:
    """An argparse ``type`` for comma-separated numbers, each ``cast`` and passing ``ok`` (``wanted`` names them)."""

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"must be comma-separated {wanted}, got {text!r}")
        return values

    return parse


def seed_value(text: str) -> int:
    """A seed: an integer in [0, 2^63 - 1], what a torch generator takes as is (``training.step.MAX_SEED``,
    the bound of a config's ``seed``; read from torch here so that this module stays a leaf)."""
    import torch

    top = torch.iinfo(torch.int64).max
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= top:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {top}], got {text!r}")
    return value


class_list = number_list(int, lambda v: v >= 0, "class indices such as 0,3,7")
non_negative_ints = number_list(int, lambda v: v >= 0, "non-negative integers")
positive_ints = number_list(int, lambda v: v >= 1, "positive integers")
positive_floats = number_list(float, lambda v: 0 < v < math.inf, "positive numbers")


def interval(text: str) -> list[float]:
    """``LOW,HIGH`` with ``0 <= LOW <= HIGH <= 1`` (a span of diffusion time)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo, hi = 1.0, 0.0
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {text!r}")
    return [lo, hi]


#: The largest |SCALE| of ``--lora RUN:SCALE``: an adapter scaled past this is noise, not a style.
MAX_LORA_SCALE = 100


def lora_spec(text: str) -> tuple[str, float]:
    """``RUN[:SCALE]``: a LoRA run and the scale of its updates (default 1; negative subtracts them)."""
    path, sep, tail = text.rpartition(":")
    if not sep or "/" in tail or "\\" in tail:  # no scale (a ':' in a path is not one)
        path, tail = text, "1"
    try:
        scale = float(tail)
    except ValueError:
        scale = math.nan
    if not path or not abs(scale) <= MAX_LORA_SCALE:
        raise argparse.ArgumentTypeError(f"must be RUN or RUN:SCALE with SCALE in [-{MAX_LORA_SCALE}, "
                                         f"{MAX_LORA_SCALE}], got {text!r}")
    return path, scale


def grid_size(text: str) -> tuple[int, ...]:
    """``HxW`` (or ``L``, ``TxHxW``): positive integers (:func:`maskdit.grid.parse_size`, as ``data.sizes``)."""
    from maskdit.grid import parse_size

    size = parse_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 16x16")
    return size


def check_out(path: str, overwrite: bool, option: str = "--out") -> None:
    """Refuse to replace an existing file unless ``--overwrite``; refuse directories and impossible paths."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file name")
    if out.exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists: pass --overwrite to replace it, or choose another name")
    check_parents(out, option)


@contextlib.contextmanager
def library_logs(verbose: bool) -> Iterator[None]:
    """Keep the libraries' own log lines and warnings (diffusers, transformers, torch: "accelerate is not
    installed", "defaulting to unsafe serialization", deprecations) off stderr unless ``verbose``: maskdit
    says what matters, as one line on failure and nothing extra on success."""
    if verbose:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def guarded(run: Callable[[], int | None]) -> int:
    """Call ``run`` the way maskdit runs a command, and return its exit status: expected failures (a
    ``MaskditError``, a ``UsageError``, a file that cannot be used) print one line and give 2, signals give 128
    + their number, a bug still shows its traceback. The benchmark scripts end with ``sys.exit(guarded(main))``."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            return run() or 0
        except (MaskditError, UsageError) as e:
            return _fail(str(e))
        except BrokenPipeError:  # the reader went away (maskdit info RUN | head): nothing more to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (so the interpreter's final flush is quiet)
            return 141
        except OSError as e:
            if e.filename is None and not isinstance(e, (PermissionError, FileNotFoundError)):
                raise
            where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
            return _fail(f"cannot use {where}: {e.strerror or e}")
        except Interrupted as e:  # training stopped on a signal after saving a checkpoint
            return e.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    if not _quiet_rank():
        print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def _quiet_rank() -> bool:
    """Whether this process is rank 1 or above of a well-formed torchrun world: every rank fails alike on bad
    input, so rank 0 alone says so (a malformed RANK or WORLD_SIZE is itself the error, and every rank says it)."""
    try:
        rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return 0 < rank < size
