"""A stand-in DVC project in seconds, for the tests of `dvc exp` around the pipeline (compare, reference).

It has the repository's params.yaml and one stage that writes the repository's committed metrics files (the default
run's, every file the real dvc.yaml declares as metrics) with each float scaled by (1 - seed / 100), so every seed
gives other figures under the real paths and keys. STANDIN_HOLD=<file> makes the stage touch that file and sleep,
STANDIN_FAIL=1 makes it fail: the points where the tests interrupt or break a run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from conftest import REPO, run

STAGE = '''import json, os, sys, time
from pathlib import Path
import yaml

seed = yaml.safe_load(open("params.yaml", encoding="utf-8"))["seed"]
if os.environ.get("STANDIN_HOLD"):
    Path(os.environ["STANDIN_HOLD"]).touch()
    time.sleep(120)
if os.environ.get("STANDIN_FAIL"):
    sys.exit("the stand-in stage fails, as asked")


def scale(x):
    if isinstance(x, dict):
        return {k: scale(v) for k, v in x.items()}
    return round(x * (1 - seed / 100), 6) if isinstance(x, float) else x


for src in sorted(Path("src").rglob("*.json")):
    out = Path(*src.parts[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scale(json.loads(src.read_text(encoding="utf-8")))), encoding="utf-8")
'''


def metrics_files() -> list[str]:
    """The repository's committed metrics files, relative to it (metrics/seeds.json is no stage's)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "metrics").rglob("*.json") if p.name != "seeds.json")


def standin_project(root: Path) -> Path:
    """The stand-in at `root`: git and DVC initialised, run once (`dvc repro`) and committed."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    files = metrics_files()
    for rel in files:
        (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / "src" / rel)
    (root / "stage.py").write_text(STAGE, encoding="utf-8")
    stage = {"cmd": "python stage.py", "deps": ["stage.py", "src"], "params": ["seed", "data", "rounds"],
             "metrics": [{rel: {"cache": False}} for rel in files]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"run": stage}}, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q", "-b", "main"], root)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        run(["git", "config", key, value], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["dvc", "repro", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "stand-in"], root)
    return root
