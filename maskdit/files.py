"""Writing what a user asked for (``--out``) atomically: readers see nothing or the whole new file or directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maskdit.errors import CheckpointError, ConfigError, MaskditError


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name and rename it over ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        fsync(tmp)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, keys: tuple[str, ...] = (), fix: str = "the file is damaged",
              error: type[MaskditError] = CheckpointError) -> dict[str, Any]:
    """A JSON object (UTF-8) from ``path`` that has ``keys``; anything else is one ``error`` naming the file
    and ending in ``fix`` (what to do about it)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path} is missing; {fix}") from e
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"cannot read {path} ({reason}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}; {fix}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise error(f"{path} lacks {', '.join(missing)}; {fix}")
    return data


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in chunks: what a run records of the weights it depends on (a LoRA base, a
    tokenizer) and checks before it uses them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
