"""Stage `base`: settle the base policy in models/base/.

`model.base: tiny` builds the offline tiny Qwen2 stand-in (lawshift/train/tiny.py: tokenizer trained on the data, seeded
weights, a short warm-start on the sampling prompt, `sample.prompt`, so it answers in format). Any other value is a
hub id or local path: it is checked (safetensors, no remote code) and recorded as a pointer (lawshift/core/models.py),
not copied.

    python stages/base.py            # normally: dvc repro base
"""

from lawshift.core import files, models, paths
from lawshift.core.params import load_params
from lawshift.core.runinfo import StageClock
from lawshift.task.prompts import load_prompt


def main() -> None:
    p = load_params()
    models.offline_env()
    clock = StageClock()
    if p.model.base == "tiny":
        from lawshift.train.tiny import build_base

        metrics = build_base(p.model.tiny, p.data, paths.BASE, p.seed, load_prompt(p.sample.prompt))
    else:
        metrics = models.settle_pointer(p.model, paths.BASE)
    files.write_json(paths.BASE_METRICS, metrics)
    print(f"base: {metrics} ({clock.write(paths.BASE_TIME)})")


if __name__ == "__main__":
    files.command_line("stages/base.py", __doc__)
    files.run_stage(main)
