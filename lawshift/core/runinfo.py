"""Where a run's time and memory go: each stage writes its wall time, peak memory (and throughput, where it has one)
to its own file under metrics/time/, apart from its results, so comparing two machines' runs with
`dvc metrics diff` shows differences in those files only.

    python -m lawshift.core.runinfo          # after `dvc repro`: one line per stage, read from metrics/time/*.json
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from lawshift.core import files, numerics, paths


def time_files(rounds: Sequence[str] = ("round1",)) -> dict[str, str]:
    """Stage name (as `dvc repro` names it) -> its time file, for the rounds given."""
    out = {"base": paths.BASE_TIME}
    for name in rounds:
        where = paths.round_files(name)
        out |= {f"sample@{name}": where["sample_time"], f"filter@{name}": where["filter_time"],
                f"train@{name}": where["train_time"]}
    out["grpo"] = paths.GRPO_FILES["time"]  # the GRPO arm beside the rounds
    out["eval_base"] = paths.eval_files(paths.BASE_MODEL)["time"]
    for name in rounds:
        out[f"eval@{name}"] = paths.eval_files(name)["time"]
    out["eval_grpo"] = paths.eval_files(paths.GRPO)["time"]
    return out


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

    def write(self, path: str | Path, extra: dict | None = None) -> dict:
        """Write the stage's timing (plus `extra`, e.g. tokens per second, and the numerics it ran under) to its
        time file; returns what it printed (the numerics left out)."""
        stats = {**(extra or {}), **self.stats()}
        files.write_json(path, {**stats, "numerics": numerics.settings()})
        return stats


def summary(root: str | Path = ".") -> str:
    from lawshift.core.params import load_params

    rows, total = [], 0.0
    params = Path(root) / "params.yaml"
    rounds = list(load_params(params).rounds) if params.is_file() else ["round1"]
    for name, file in time_files(rounds).items():
        path = Path(root) / file
        if not path.is_file():
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        wall, rss = m.get("wall_seconds", 0.0), m.get("peak_rss_mb", 0.0)
        total += wall
        rows.append(f"  {name:<15} {wall:8.1f} s   peak {rss:7.0f} MB")
    return "\n".join(["time and memory per stage (from metrics/time/):", *rows,
                      f"  {'total':<15} {total:8.1f} s"])


if __name__ == "__main__":
    args = files.command_line("python -m lawshift.core.runinfo", __doc__,
                              positional=("root", ".", "the project whose metrics/time/ to sum"))
    print(summary(args.root))
