"""The GRPO arm's budget: how many answers it may generate, the steps they make, and the meter that counts them.

By default (`grpo.budget: 0`) the arm generates as many answers as all RFT rounds sampled together, first draws and
resampling, read from each round's metrics/<round>/sample.json (`answers_generated`). A step generates
`grpo.batch_size` answers, `sample.num_samples` (a group) for each of batch_size / num_samples cases; a budget that
is not a whole number of steps is rounded down, and the plan says so. The meter counts the answers and tokens the
trainer generated and is saved with every checkpoint, so a resumed run neither pays twice nor counts twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lawshift.core import files, paths
from lawshift.core.files import InputError
from lawshift.core.params import Params, param_error


@dataclass(frozen=True)
class Plan:
    budget: int  # answers allowed
    source: str  # where the budget comes from, for the log and the metrics
    group: int  # answers per case (sample.num_samples)
    batch: int  # answers per optimizer step (grpo.batch_size)

    @property
    def steps(self) -> int:
        return self.budget // self.batch

    @property
    def answers(self) -> int:
        """What the run generates: whole steps within the budget."""
        return self.steps * self.batch

    @property
    def note(self) -> str | None:
        left = self.budget - self.answers
        return (f"budget {self.budget} answers is not a whole number of steps of {self.batch}: rounded down to "
                f"{self.steps} steps, {self.answers} answers ({left} unused)") if left else None


def rounds_budget(rounds: Sequence[str], read: Callable[[str], dict] = files.read_json) -> tuple[int, str]:
    """All rounds' answers together (first draws and resampling), and where they come from."""
    counts = {}
    for name in rounds:
        path = paths.round_files(name)["sample_metrics"]
        if not Path(path).is_file() and read is files.read_json:
            raise InputError(path, f"missing: sample@{name} has not run (grpo.budget 0 reads it)")
        got = read(path).get("answers_generated")
        if not isinstance(got, int) or isinstance(got, bool) or got < 0:
            raise InputError(path, "must be a count of answers", field="answers_generated")
        counts[name] = got
    return sum(counts.values()), " + ".join(f"{n} {c}" for n, c in counts.items())


def check_declared(rounds: Sequence[str], dvc_yaml: str | Path = "dvc.yaml") -> None:
    """With grpo.budget 0 the stage reads every round's sample metrics: dvc.yaml must list each as a dep of stage
    grpo, or DVC could run it before a round's sampling (or keep it when a round changes)."""
    if not Path(dvc_yaml).is_file():
        return
    stage = (yaml.safe_load(files.read_text(dvc_yaml)) or {}).get("stages", {}).get("grpo") or {}
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []}
    for name in rounds:
        if (path := paths.round_files(name)["sample_metrics"]) not in deps:
            raise InputError(dvc_yaml, f"stage grpo must depend on {path} (grpo.budget 0 counts every round's "
                                       "answers): add it to its deps", field="stages.grpo.deps")


def plan(p: Params, read: Callable[[str], dict] = files.read_json) -> Plan:
    """The run's budget and steps; bad params are the one-line error naming params.yaml and the key."""
    group, batch = p.sample.num_samples, p.grpo.batch_size
    if group < 2:
        raise param_error("sample.num_samples", f"GRPO compares the answers of a case: needs >= 2 per case, "
                                                f"got {group}")
    if batch % group:
        raise param_error("grpo.batch_size", f"{batch} answers per step is not a whole number of groups of "
                                             f"sample.num_samples={group}")
    if p.grpo.budget:
        budget, source = p.grpo.budget, "grpo.budget"
    else:
        check_declared(list(p.rounds))
        budget, source = rounds_budget(list(p.rounds), read)
        source = f"all rounds' answers: {source}"
    if budget < batch:
        raise param_error("grpo.budget", f"{budget} answers ({source}) is less than one step of grpo.batch_size="
                                         f"{batch}")
    return Plan(budget, source, group, batch)


class Meter:
    """Answers, generated tokens and one row per step (answers and tokens so far, mean reward, groups whose answers
    all scored 0 or all 1: no signal for GRPO); saved into each checkpoint folder (paths.METER)."""

    def __init__(self, group: int, rows: list[dict] | None = None):
        self.group, self.rows = group, rows or []

    @property
    def answers(self) -> int:
        return self.rows[-1]["answers"] if self.rows else 0

    @property
    def tokens(self) -> int:
        return self.rows[-1]["tokens"] if self.rows else 0

    def add(self, step: int, completion_ids: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        groups = [rewards[i:i + self.group] for i in range(0, len(rewards), self.group)]
        self.rows.append({"step": step, "answers": self.answers + len(completion_ids),
                          "tokens": self.tokens + sum(len(ids) for ids in completion_ids),
                          "reward": round(sum(rewards) / len(rewards), 6) if rewards else 0.0,
                          "groups_all_0": sum(max(g) == 0 for g in groups),
                          "groups_all_1": sum(min(g) == 1 for g in groups), "groups": len(groups)})

    def save(self, folder: str | Path) -> None:
        files.write_json(Path(folder) / paths.METER, {"group": self.group, "rows": self.rows})

    @classmethod
    def load(cls, folder: str | Path) -> Meter:
        got = files.read_json(Path(folder) / paths.METER)
        return cls(got["group"], got["rows"])
