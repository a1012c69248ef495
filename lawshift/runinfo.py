"""Where a run's time and memory go: each stage records its wall time and peak memory in its metrics file.

    python -m lawshift.runinfo          # after `dvc repro`: one line per stage, read from metrics/*.json
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

# stage -> its metrics file name; eval keeps time apart from its metrics, whose shape is an interface
STAGES = {"base": "base", "sample": "sample", "filter": "filter", "train": "train", "eval@base": "eval_base_time",
          "eval@sft": "eval_sft_time"}


class StageClock:
    """Started when a stage starts; `stats()` gives wall seconds and peak resident memory so far."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def stats(self) -> dict:
        # ru_maxrss is in KiB on Linux; children covers tokenizer/dataloader worker processes, if any.
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {"wall_seconds": round(time.perf_counter() - self.start, 2),
                "peak_rss_mb": round(max(own, kids) / 1024, 1)}


def summary(metrics_dir: str | Path = "metrics") -> str:
    rows, total = [], 0.0
    for name, file in STAGES.items():
        path = Path(metrics_dir) / f"{file}.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        wall, rss = m.get("wall_seconds", 0.0), m.get("peak_rss_mb", 0.0)
        total += wall
        rows.append(f"  {name:<10} {wall:8.1f} s   peak {rss:7.0f} MB")
    return "\n".join(["time and memory per stage (from metrics/*.json):", *rows, f"  {'total':<10} {total:8.1f} s"])


if __name__ == "__main__":
    print(summary(sys.argv[1] if len(sys.argv) > 1 else "metrics"))
