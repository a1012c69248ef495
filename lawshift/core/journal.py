"""Resumable journals: the one file format behind every stage that can be interrupted and continued.

    journal = Journal("outputs/round1/samples.jsonl.partial", settings, who="sample")
    journal.open(lambda line, rec, span: ...)   # records of a matching earlier run, or a fresh file
    journal.append([rec, ...])                  # one write + fsync per call
    journal.write_to(out, build)                # records built from spans, atomically
    journal.remove()

Line 1 is a header `{"fingerprint", "settings"}`; every further line a record. Other settings start afresh (one
line names what changed), a torn last line is redone, a corrupt line is an error naming it. docs/pipeline.md
(Interrupted runs) has the rules.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lawshift.core.files import InputError, atomic_path, json_digest, write_text

Span = tuple[int, int]  # (byte offset, length) of one record's line


def header(settings: dict) -> bytes:
    return (json.dumps({"fingerprint": json_digest(settings), "settings": settings}, sort_keys=True,
                       ensure_ascii=False) + "\n").encode("utf-8")


def parse_header(raw: bytes) -> dict | None:
    """The header object of a journal's first line, or None when it is missing, torn or not a header."""
    try:
        head = json.loads(raw) if raw.endswith(b"\n") else None
    except ValueError:
        return None
    if not isinstance(head, dict) or "fingerprint" not in head or not isinstance(head.get("settings"), dict):
        return None
    return head


def changed_settings(old: dict, new: dict) -> list[str]:
    """The names of the settings whose values differ between two headers (sorted)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def mismatch(raw_header: bytes, settings: dict) -> str | None:
    """Why a journal with this first line cannot be continued under `settings`, or None when it can."""
    head = parse_header(raw_header)
    if head is None:
        return "no readable header line"
    if head["fingerprint"] != json_digest(settings):
        changed = changed_settings(head["settings"], settings)
        return f"written with different settings ({', '.join(changed) or 'fingerprint'})"
    return None


def check(path: str | Path, settings: dict) -> str | None:
    """Why the journal at `path` cannot be continued ('missing' when there is none), or None when it can."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    with open(path, "rb") as f:
        return mismatch(f.readline(), settings)


def start(path: str | Path, settings: dict) -> None:
    """A new journal holding only its header, written atomically (so a journal always starts with a whole one)."""
    write_text(path, header(settings).decode("utf-8"))


def _record(path: Path, lineno: int, raw: bytes) -> dict:
    try:
        rec = json.loads(raw)
    except ValueError as err:
        raise InputError(path, f"corrupt line ({err}); delete the file to start afresh", line=lineno) from None
    if not isinstance(rec, dict):
        raise InputError(path, "a record must be a JSON object; delete the file to start afresh", line=lineno)
    return rec


def read(path: str | Path) -> tuple[dict, list[tuple[int, dict, bytes]]]:
    """A finished journal (a shard file): its header settings and every record as (line, record, raw line).
    Strict: no header, a torn or corrupt line are errors naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror}") from None
    if lines[-1]:
        raise InputError(path, "incomplete last line", line=len(lines))
    head = parse_header(lines[0] + b"\n")
    if head is None:
        raise InputError(path, "no header line: not a journal of this project", line=1)
    return head["settings"], [(n, _record(path, n, raw), raw + b"\n")
                              for n, raw in enumerate(lines[1:-1], start=2)]


class Journal:
    """An append-only journal under a settings header; see the module docstring for the rules."""

    def __init__(self, path: str | Path, settings: dict, who: str):
        self.path, self.settings, self.who = Path(path), settings, who
        self.size = 0  # bytes of complete lines: where the next record goes
        self.header_size = 0
        self.resumed = 0  # records kept from an earlier run
        self._f = None

    def _say(self, message: str) -> None:
        print(f"{self.who}: {message}", file=sys.stderr)

    def open(self, on_record: Callable[[int, dict, Span], None] = lambda *_: None) -> None:
        """Continue a matching journal, calling `on_record(line, record, span)` for each of its records (an
        InputError from it propagates), or start a fresh one. Afterwards the journal takes appends."""
        why = check(self.path, self.settings)
        if why is None:
            self._scan(on_record)
        else:
            if why != "missing":
                self._say(f"{self.path}: {why}; starting afresh")
            start(self.path, self.settings)
            self.size = self.header_size = self.path.stat().st_size
        self._f = open(self.path, "ab")

    def _scan(self, on_record: Callable[[int, dict, Span], None]) -> None:
        with open(self.path, "rb") as f:
            self.size = self.header_size = len(f.readline())
            for lineno, raw in enumerate(f, start=2):
                if not raw.endswith(b"\n"):
                    # A killed write: the rest of this line never reached the disk. Cut it off and redo it.
                    os.truncate(self.path, self.size)
                    self._say(f"{self.path}:{lineno}: dropped a torn last line (an interrupted write)")
                    break
                on_record(lineno, _record(self.path, lineno, raw), (self.size, len(raw)))
                self.resumed += 1
                self.size += len(raw)

    def append(self, records: Sequence[dict]) -> list[Span]:
        """One write, then flush and fsync: once this returns the records survive a kill or power loss."""
        lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in records]
        self._f.write(b"".join(lines))
        self._f.flush()
        os.fsync(self._f.fileno())
        spans = []
        for line in lines:
            spans.append((self.size, len(line)))
            self.size += len(line)
        return spans

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def copy_to(self, out: str | Path, spans: Sequence[Span], keep_header: bool = False,
                each: Callable[[bytes], None] = lambda _: None) -> None:
        """Write the records at `spans`, in that order, to `out` atomically (the header first only if
        `keep_header`), calling `each(raw line)` for each."""
        self.close()
        with atomic_path(out) as tmp, open(self.path, "rb") as src, open(tmp, "wb") as dst:
            if keep_header:
                dst.write(src.read(self.header_size))
            for offset, length in spans:
                src.seek(offset)
                raw = src.read(length)
                each(raw)
                dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())

    def write_to(self, out: str | Path, build: Callable[[Callable[[Span], dict]], Iterable[dict]],
                 keep_header: bool = False) -> None:
        """Write the records `build(read)` yields, in that order, to `out` atomically as journal lines (the header
        first only if `keep_header`); `read(span)` gives the record at a span of this journal. The records stream
        from one open file to the output: a large journal is never held in memory."""
        self.close()
        with atomic_path(out) as tmp, open(self.path, "rb") as src, open(tmp, "wb") as dst:
            if keep_header:
                dst.write(src.read(self.header_size))

            def read(span: Span) -> dict:
                src.seek(span[0])
                return _record(self.path, None, src.read(span[1]))

            for rec in build(read):
                dst.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            dst.flush()
            os.fsync(dst.fileno())

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
