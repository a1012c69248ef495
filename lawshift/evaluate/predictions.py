"""Eval's predictions file, written in prompt order from answers that come in batch order, one prompt in memory.

    spool = Spool(ids, directory)          # each batch's records as they come: spool.add(records)
    summary = write_predictions(path, spool, k)   # the file, in prompt order; summary.metrics, .examples, .errors

Batches run longest prompt first, so answers arrive out of order; the spool keeps them on disk (an unnamed temporary
file, gone with the process) and reads them back by position. `Summary` takes what the metrics, the report and the
term-error plot need on the way through, so eval's memory does not grow with its answers.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lawshift.core import files
from lawshift.evaluate.evalmetrics import MetricsBuilder

TERM_ERROR_CLIP = 120  # months: errors beyond ±10 years are pooled in the end bins of the term-error plot
EXAMPLES = 5  # unparseable answers quoted in the report


class Spool:
    """Each prompt's records as JSON lines on disk, found again by the prompt's position in `ids`."""

    def __init__(self, ids: Sequence[str], directory: str | Path):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.position = {pid: i for i, pid in enumerate(ids)}
        self.file = tempfile.TemporaryFile(dir=directory, prefix=".eval-spool-")
        self.at, self.size = array("q", [-1]) * len(ids), array("q", [0]) * len(ids)

    def add(self, records: Iterable[dict]) -> None:
        """A batch's records: each prompt's draws together, as eval scores them."""
        for pid, rs in itertools.groupby(records, key=lambda r: r["id"]):
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs).encode("utf-8")
            self.file.seek(0, 2)
            self.at[self.position[pid]], self.size[self.position[pid]] = self.file.tell(), len(data)
            self.file.write(data)

    def __iter__(self) -> Iterator[list[dict]]:
        """Each prompt's records, in prompt order."""
        for pid, i in self.position.items():
            if self.at[i] < 0:
                raise RuntimeError(f"eval spool: no answers for prompt {pid}")
            self.file.seek(self.at[i])
            yield [json.loads(line) for line in self.file.read(self.size[i]).splitlines()]

    def close(self) -> None:
        self.file.close()


class Summary:
    """What eval's outputs need of its records, taken a prompt at a time: the metrics, the first unparseable
    answers and the term-error counts (clipped at ±TERM_ERROR_CLIP)."""

    def __init__(self, k: int, clip: int = TERM_ERROR_CLIP):
        self.builder, self.clip = MetricsBuilder(k), clip
        self.examples: list[dict] = []
        self.errors: Counter[int] = Counter()
        self.answers, self.metrics = 0, {}

    def add(self, rs: Sequence[dict]) -> None:
        self.builder.add(rs)
        self.answers += len(rs)
        if len(self.examples) < EXAMPLES:
            self.examples += [r for r in rs if r["parse"] is None][:EXAMPLES - len(self.examples)]
        self.errors.update(clipped_errors(rs, self.clip))


def clipped_errors(records: Iterable[dict], clip: int = TERM_ERROR_CLIP) -> Iterator[int]:
    """Each record's term error in months, pooled at ±clip; records without one are left out."""
    return (max(-clip, min(clip, r["term_error"])) for r in records if r.get("term_error") is not None)


def write_predictions(path: str | Path, prompts: Iterable[Sequence[dict]], k: int,
                      head: dict | None = None) -> Summary:
    """Write every prompt's records, one JSON line each (after `head`, if given), atomically; their summary."""
    summary = Summary(k)
    with files.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if head is not None:
            f.write(json.dumps(head, ensure_ascii=False) + "\n")
        for rs in prompts:
            summary.add(rs)
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rs)
        f.flush()
        os.fsync(f.fileno())
    summary.metrics = summary.builder.result()
    return summary
