"""Writing what a user asked for (``--out``) atomically: readers see nothing or the whole new file or directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from maskdit.errors import ConfigError, MaskditError


def check_parents(path: str | Path, label: str, error: type[MaskditError] = ConfigError) -> None:
    """Refuse ``path`` when one of its parents is a file, so it could never be made; the error names it after
    ``label`` (the option or key that gave it)."""
    for parent in Path(path).parents:
        if parent.exists() and not parent.is_dir():
            raise error(f"{label} {path}: {parent} is a file, not a directory; choose another {label}")


@contextlib.contextmanager
def atomic_file(path: str | Path, label: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (same suffix, so writers that read it pick the format) and
    rename it over ``path`` when the block succeeds. On any failure the temporary is removed, and an
    ``OSError`` (full disk, no permission, a parent that is a file) names ``path`` as the user gave it,
    after ``label`` (the option that named it, e.g. ``--out``), never the temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        tmp.replace(path)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), f"{label} {path}".strip()) from None
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(out: str | Path, label: str = "--out") -> Iterator[Path]:
    """Yield a new hidden directory beside ``out`` to write into; it is renamed to ``out`` (absent, or an
    empty directory) when the block succeeds, so ``out`` appears whole or not at all. On any failure it is
    removed, with the parents this call made, and an ``OSError`` names ``out`` after ``label``."""
    out = Path(out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # innermost first
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        yield tmp
        tmp.replace(out)
        tmp = None
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), f"{label} {out}".strip()) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for parent in made:
                try:
                    parent.rmdir()
                except OSError:
                    break
