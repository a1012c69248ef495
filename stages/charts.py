"""Stage `charts`: one file per kind of chart, every model side by side (dvc.yaml's top-level `plots` draw them).

Joins each kind's folder of per-model plot files (lawshift/core/paths.py CHARTS: plots/eval_folders/<model>.csv from
eval@<model>, plots/filter_accepted/<round>.csv from filter@<round>, plots/train_curves/<round>.csv from
train@<round>, …) into plots/<kind>.csv; lawshift/experiments/charts.py says how. It reads the folders, so it follows
`rounds`.

    python stages/charts.py          # normally: dvc repro charts; then dvc plots show
"""

from lawshift.core import files, paths
from lawshift.experiments import charts


def main() -> None:
    for kind in paths.CHARTS:
        print(f"charts: {charts.join(kind)}")


if __name__ == "__main__":
    files.command_line("stages/charts.py", __doc__)
    files.run_stage(main)
