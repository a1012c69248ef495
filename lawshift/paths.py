"""Where the pipeline's files live: the one list that dvc.yaml and the code both name.

dvc.yaml loads this file as `vars` (DVC reads its plain assignments; it never runs it), so `${SAMPLES}` there and
`paths.SAMPLES` here are the same string, and a path changed here moves in both. Only literal assignments of
strings, lists and mappings may appear here, nothing DVC's reader would have to execute.
"""

# base
BASE = "models/base"
BASE_METRICS = "metrics/base.json"
# sample
SAMPLES = "outputs/samples.jsonl"
SAMPLE_METRICS = "metrics/sample.json"
# filter
SFT_DATA = "outputs/sft.jsonl"
FILTER_METRICS = "metrics/filter.json"
FILTER_PLOT = "plots/filter_accepted.csv"
# train
ADAPTER = "models/sft"
TRAIN_METRICS = "metrics/train.json"
CHECKPOINTS = "checkpoints/sft"
LIVE = "dvclive/train"
TENSORBOARD = "logs/train"
# eval: one entry per evaluated model. `weights` is what the model adds to models/base (a dvc.yaml dep): the base
# itself for `base`, the trained adapter for `sft`; `adapter` is the directory loaded on top of the base, or "".
EVAL = {
    "base": {"weights": "models/base", "adapter": "", "predictions": "outputs/predictions_base.jsonl",
             "metrics": "metrics/eval_base.json", "report": "reports/eval_base.md",
             "folders_plot": "plots/eval_base_folders.csv", "term_errors_plot": "plots/eval_base_term_errors.csv",
             "time": "metrics/time/eval_base.json"},
    "sft": {"weights": "models/sft", "adapter": "models/sft", "predictions": "outputs/predictions_sft.jsonl",
            "metrics": "metrics/eval_sft.json", "report": "reports/eval_sft.md",
            "folders_plot": "plots/eval_sft_folders.csv", "term_errors_plot": "plots/eval_sft_term_errors.csv",
            "time": "metrics/time/eval_sft.json"},
}
# Wall time, peak memory and throughput of each stage, apart from its results: `dvc metrics diff` between two
# machines then differs in these files only. The eval stages' are EVAL[model]["time"].
TIME = {
    "base": "metrics/time/base.json",
    "sample": "metrics/time/sample.json",
    "filter": "metrics/time/filter.json",
    "train": "metrics/time/train.json",
}
