"""File I/O shared by every stage: one-line input errors and atomic outputs.

Two rules hold for every file the pipeline touches:

* Reading bad input raises `InputError`, whose message is a single line naming the file and, where it
  applies, the record index (or JSONL line) and the field. Stage entry points turn it into that line on
  stderr and a non-zero exit (see `run_stage`).
* Writing goes to a temporary sibling first and is renamed into place, so an interrupted stage never
  leaves a half-written file that DVC could record as a result.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad input: the message is one line naming file, record index and field."""

    def __init__(self, path: str | os.PathLike, message: str, index: int | None = None, field: str | None = None,
                 line: int | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if index is not None:
            where += f": record {index}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {' '.join(str(message).split())}")


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 (byte offset {err.start})") from None


def read_json(path: str | os.PathLike) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON: {err.msg} (column {err.colno})", line=err.lineno) from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record). A corrupt line is an error, never silently skipped."""
    text = read_text(path)
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and other separators that
    # json.dumps(ensure_ascii=False) leaves raw inside strings, so model text holding one would read as corrupt.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(path, f"corrupt JSONL line: {err.msg} (column {err.colno})", line=lineno) from None


# --- digests: one set of helpers for every fingerprint -------------------------------------------------------------

def _feed_file(path: str | os.PathLike, h) -> None:
    """Feed a file's bytes into hash `h`, a megabyte at a time (model weights do not fit in memory twice)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    _feed_file(path, h)
    return h.hexdigest()


def tree_digest(path: str | os.PathLike) -> str:
    """sha256 over every file below a directory (relative path and bytes of each, in sorted order); a single
    file hashes as a tree of one."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update((f.relative_to(path).as_posix() if f != path else f.name).encode() + b"\0")
        _feed_file(f, h)
        h.update(b"\0")
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys): the fingerprint of a settings mapping."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def json_list_digest(items: Iterable[Any]) -> str:
    """`json_digest(list(items))`, fed an item at a time: the same digest without the list or its JSON text in memory
    (a run's prompts: ~100 MB of text at full LawShift size)."""
    h = hashlib.sha256(b"[")
    for k, item in enumerate(items):
        h.update((", " if k else "").encode() + json.dumps(item, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    h.update(b"]")
    return h.hexdigest()


def model_digest(name_or_path: str | os.PathLike) -> str:
    """Content hash of a local model directory (every file, by relative path); a hub id stands for itself.

    Resumable stages put it in their fingerprint, so a partial result made with other weights is never continued.
    """
    path = Path(name_or_path)
    return tree_digest(path) if path.is_dir() else f"hub:{name_or_path}"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


def _remove_stale_temps(path: Path) -> None:
    """Temp siblings of `path` left by a killed run (a kill skips atomic_path's cleanup): a model-sized temp dir
    would otherwise stay forever. Only names tempfile makes for this very target match."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for old in path.parent.iterdir():
        if stale.fullmatch(old.name):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path`, on failure remove it.

    Works for files and directories. The rename is atomic on one filesystem, so readers (and DVC) see either
    the old output, no output, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    # mkdtemp reserves a unique name; callers writing a file want the name free.
    tmp.rmdir()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj))


def write_jsonl(path: str | os.PathLike, records: list[Any]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage's main(); bad input becomes one line on stderr and exit status 2."""
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def command_line(prog: str, doc: str | None, argv: Sequence[str] | None = None,
                 positional: tuple[str, str, str] | None = None) -> argparse.Namespace:
    """A stage's or tool's arguments, parsed before it does anything: `--help` prints the usage and the docstring's
    first paragraph and exits 0, a bad argument exits 2. `positional` = (name, default, help): one optional
    positional argument, e.g. a stage's round."""
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    if positional:
        name, default, text = positional
        ap.add_argument(name, nargs="?", default=default, help=f"{text} (default: {default})")
    return ap.parse_args(sys.argv[1:] if argv is None else argv)
