"""Stage `filter`: keep the right sampled answers, deduplicated and weighted -> outputs/sft.jsonl.

Reads outputs/samples.jsonl (stage `sample`); the acceptance rule and weighting are in lawshift/filtering.py.
Cheap and separate from sampling, so changing `filter.*` reruns only filter -> train -> eval.

    python stages/filter.py          # normally: dvc repro filter
"""

from pathlib import Path

from lawshift import files, filtering
from lawshift.params import load_params
from lawshift.runinfo import StageClock

SAMPLES = Path("outputs/samples.jsonl")
OUT = Path("outputs/sft.jsonl")
METRICS = Path("metrics/filter.json")
PLOT = Path("plots/filter_accepted.csv")


def main() -> None:
    p = load_params()
    filtering.check_params(p.filter)
    clock = StageClock()
    outcomes = filtering.run(SAMPLES, OUT, p.filter)
    metrics = filtering.summarise(outcomes) | clock.stats()
    filtering.write_histogram(PLOT, filtering.accepted_histogram(outcomes))
    files.write_json(METRICS, metrics)
    print(f"filter: {metrics}")


if __name__ == "__main__":
    files.run_stage(main)
