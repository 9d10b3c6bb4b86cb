"""Writing a user-visible file atomically: readers see the old file or the whole new one, never half."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


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
