"""Stage `filter`: keep the right sampled answers, deduplicated and weighted -> outputs/sft.jsonl.

Reads outputs/samples.jsonl (stage `sample`); the acceptance rule and weighting are in lawshift/filtering.py.
Cheap and separate from sampling, so changing `filter.*` reruns only filter -> train -> eval.

    python stages/filter.py          # normally: dvc repro filter
"""

from lawshift import files, filtering, paths
from lawshift.params import load_params
from lawshift.runinfo import StageClock


def main() -> None:
    p = load_params()
    clock = StageClock()
    outcomes = filtering.run(paths.SAMPLES, paths.SFT_DATA, p.filter)
    metrics = filtering.summarise(outcomes)
    filtering.write_histogram(paths.FILTER_PLOT, filtering.accepted_histogram(outcomes))
    files.write_json(paths.FILTER_METRICS, metrics)
    print(f"filter: {metrics} ({clock.write(paths.TIME['filter'])})")


if __name__ == "__main__":
    files.run_stage(main)
