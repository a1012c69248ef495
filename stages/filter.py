"""Stage `filter@<round>`: the round's right sampled answers, deduplicated and weighted -> outputs/<round>/sft.jsonl.

Reads outputs/<round>/samples.jsonl (stage `sample@<round>`) and, when the round has `keep_previous`, the answers
the policy's model was trained on (models/<previous round>/sft.jsonl). The acceptance rule and weighting are in
lawshift/sample/filtering.py. Cheap and separate from sampling, so changing `filter.*` reruns only filter -> train ->
eval.

    python stages/filter.py round1   # normally: dvc repro filter@round1
"""

from pathlib import Path

from lawshift.core import files, paths
from lawshift.core.params import load_params
from lawshift.core.runinfo import StageClock
from lawshift.sample import filtering


def main(name: str = "round1") -> None:
    p = load_params()
    rp = p.round(name)
    clock = StageClock()
    where = paths.round_files(name)
    previous = None
    if rp.keep_previous and rp.policy != paths.BASE_MODEL:
        previous = Path(paths.round_files(rp.policy)["adapter"]) / paths.TRAINED_ON
    outcomes = filtering.run(where["samples"], where["sft"], p.filter, previous)
    metrics = filtering.summarise(outcomes)
    filtering.write_histogram(where["filter_plot"], filtering.accepted_histogram(outcomes))
    files.write_json(where["filter_metrics"], metrics)
    print(f"filter@{name}: {metrics} ({clock.write(where['filter_time'])})")


if __name__ == "__main__":
    args = files.command_line("stages/filter.py", __doc__, positional=("round", "round1", "the round to filter"))
    files.run_stage(lambda: main(args.round))
