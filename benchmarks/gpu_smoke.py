"""The GPU smoke run: the pipeline on the tiny offline base, on CUDA, with vLLM, 4-bit and the paged optimizer.

    make gpu-smoke                                   # on a CUDA machine, with `make gpu-venv` installed
    python -m benchmarks gpu_smoke --out /tmp/smoke.json
    PYTHONPATH=$PWD:$PWD/tests/vllm_standin python -m benchmarks gpu_smoke --allow-cpu   # CPU dry run

First the driver's CUDA version against the GPU set's (one line naming both when it is too old), then, in a scratch
project of 16 training cases, each stage in its own process as `dvc repro` runs it (the caller's environment, never
what this process gained by importing): base, sample (hf, then vLLM), filter, QLoRA train, eval of the base and of
round 1 (vLLM, the adapter through a LoRARequest), round 2's sampling, three GRPO steps (4-bit) and their model's
eval, whose answers must differ from the base's. Per stage: wall time, tokens/s, peak GPU memory (nvidia-smi) and
key results; a failed stage ends the run with exit status 1, naming it. docs/gpu.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.gpu_probe import GpuPeak, cuda_problem, driver_cuda, gpu_memory_mb, gpu_names, probe, torch_build
from benchmarks.smoke_project import (
    REPO,
    copy_sources,
    make_data_root,
    read_json,
    set_params,
    smoke_params,
    stage_env,
    write_json,
)
from lawshift.core import paths

NAME = "gpu_smoke"
PROG_NAME = NAME  # the prefix of its own messages
LOGS = "logs/smoke"
TAIL_LINES = 40


@dataclass
class Step:
    """One stage process of the run."""

    name: str  # as in the table
    script: str
    args: tuple[str, ...] = ()
    backend: str = "-"
    metrics: str = ""  # the stage's metrics file
    time_file: str = ""
    params: dict = field(default_factory=dict)  # params.yaml changes before it runs
    aside: str = ""  # suffix its samples + time files are copied aside under, before the next sampling run


R1, R2 = paths.round_files("round1"), paths.round_files("round2")
EB, E1, EG = paths.eval_files("base"), paths.eval_files("round1"), paths.eval_files(paths.GRPO)
GF = paths.GRPO_FILES
STEPS = (
    Step("base", "base", metrics=paths.BASE_METRICS, time_file=paths.BASE_TIME, backend="tiny"),
    Step("sample@round1", "sample", ("round1",), backend="hf", metrics=R1["sample_metrics"],
         time_file=R1["sample_time"], params={"sample": {"backend": "hf"}}, aside="_hf"),
    Step("sample@round1", "sample", ("round1",), backend="vllm", metrics=R1["sample_metrics"],
         time_file=R1["sample_time"], params={"sample": {"backend": "vllm"}}),
    Step("filter@round1", "filter", ("round1",), metrics=R1["filter_metrics"], time_file=R1["filter_time"]),
    Step("train@round1", "train", ("round1",), backend="qlora", metrics=R1["train_metrics"],
         time_file=R1["train_time"]),
    Step("eval@base", "eval", ("base",), backend="vllm", metrics=EB["metrics"], time_file=EB["time"]),
    Step("eval@round1", "eval", ("round1",), backend="vllm", metrics=E1["metrics"], time_file=E1["time"]),
    # round 2 samples from base + round 1's adapter: vLLM with the adapter through a LoRARequest
    Step("sample@round2", "sample", ("round2",), backend="vllm+lora", metrics=R2["sample_metrics"],
         time_file=R2["sample_time"]),
    # the GRPO arm: 3 steps of 16 answers on a 4-bit base (HF generation), then its model's eval; its answers must
    # differ from the base's (check_grpo_moved): the update reached the adapter
    Step("grpo", "grpo", backend="grpo 4-bit", metrics=GF["metrics"], time_file=GF["time"],
         params={"grpo": {"device": "auto", "load_in_4bit": True, "batch_size": 16, "budget": 48}}),
    Step("eval@grpo", "eval", ("grpo",), backend="vllm+lora", metrics=EG["metrics"], time_file=EG["time"]),
)
# With 2 GPUs or more: round 2's sampling again, on a Ray pool of two vLLM engines, and round 1's training on two
# processes, one GPU each (docs/scaling.md).
TWO_WORKERS = Step("sample@round2", "sample", ("round2",), backend="vllm+lora x2", metrics=R2["sample_metrics"],
                   time_file=R2["sample_time"], params={"sample": {"workers": 2}})
TWO_PROCESSES = Step("train@round1", "train", ("round1",), backend="qlora x2 processes", metrics=R1["train_metrics"],
                     time_file=R1["train_time"], params={"train": {"num_processes": 2}})


def steps(gpus: int) -> tuple[Step, ...]:
    return (*STEPS, TWO_WORKERS, TWO_PROCESSES) if gpus >= 2 else STEPS


# The key results of each stage's metrics file: (label, keys into the JSON).
RESULTS = {
    "base": (("warmup_loss_last", ("warmup_loss_last",)),),
    "sample": (("generated_tokens", ("generated_tokens",)), ("correct", ("correct_exact",)),
               ("unfinished", ("unfinished_answers",))),
    "filter": (("acceptance_rate", ("acceptance_rate",)), ("truncated", ("truncated",)),
               ("sft_examples", ("sft_examples",))),
    "train": (("loss_last", ("loss_last",)), ("steps", ("steps",)), ("optimizer", ("optimizer",))),
    "grpo": (("answers", ("answers_generated",)), ("reward_first", ("reward_first",)),
             ("reward_last", ("reward_last",))),
    "eval": (("original", ("overall", "original")), ("poisoned", ("overall", "poisoned")),
             ("truncated", ("overall", "truncated"))),
}


# ---- the command line ---------------------------------------------------------------------------------------

def add_options(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--workdir", type=Path, help="scratch project directory (new or empty; kept); default: a "
                    "temporary one, removed after a successful run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary scratch project")
    ap.add_argument("--out", type=Path, help="write the result as JSON to this file")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="dry run on a CPU machine: every device cpu, any importable vllm, no GPU memory poll")
    ap.add_argument("--cases", type=int, default=16, help="training cases (default 16)")
    ap.add_argument("--eval-cases", type=int, default=16, help="eval cases per split, 0 = the whole folder "
                    "(default 16)")
    ap.add_argument("--max-steps", type=int, default=20, help="train.max_steps (default 20)")
    ap.add_argument("--warmup-steps", type=int, default=150, help="model.tiny.warmup_steps (default 150)")
    ap.add_argument("--stage-timeout", type=int, default=600, help="seconds one stage may run (default 600)")
    return ap


def add_parser(sub) -> None:
    """The `gpu_smoke` subcommand of `python -m benchmarks` (own output and exit status; no results entry)."""
    p = sub.add_parser(NAME, help="the pipeline on CUDA with vLLM, 4-bit and the paged optimizer, in minutes",
                       description=__doc__.split("\n\n")[0])
    add_options(p)
    p.set_defaults(run=run, standalone=True)


# ---- running the stages --------------------------------------------------------------------------------------

class StageFailed(Exception):
    pass


def slug(step: Step) -> str:
    return "-".join([step.name.replace("@", "_"), step.backend])


def launch(cmd: list[str], project: Path, env: dict, log: str, timeout: int) -> int:
    """Run a stage process (its own process group, so a timeout also ends vLLM's engine); its exit status."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.write(f"\n[gpu_smoke] killed after {timeout} s (--stage-timeout)\n")
            return -signal.SIGKILL


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def dig(obj, keys: Sequence[str]):
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def stage_row(project: Path, step: Step, wall: float, peak: int | None) -> dict:
    """A stage's row: wall time, tokens/s (its time file), peak GPU memory, key results (its metrics file)."""
    timing = read_json(project / step.time_file) if (project / step.time_file).is_file() else {}
    metrics = read_json(project / step.metrics) if (project / step.metrics).is_file() else {}
    tok_s = timing.get("tokens_per_second", timing.get("train_tokens_per_second"))
    results = {label: dig(metrics, keys) for label, keys in RESULTS[step.script]}
    return {"stage": step.name, "backend": step.backend, "wall_seconds": round(wall, 1), "tokens_per_second": tok_s,
            "peak_gpu_mb": peak, "results": results, "time": timing}


def set_aside(project: Path, suffix: str) -> None:
    """Copy the sampling run's samples and metrics aside (name + suffix) and remove its samples.jsonl."""
    for rel in (R1["samples"], R1["sample_metrics"], R1["sample_time"]):
        src = project / rel
        if src.is_file():
            shutil.copy2(src, src.with_name(f"{src.stem}{suffix}{src.suffix}"))
    (project / R1["samples"]).unlink(missing_ok=True)


def check_grpo_moved(project: Path) -> None:
    """GRPO's model answers the eval prompts with the base's random streams: some answer must differ, or its
    updates never reached the adapter."""
    def answers(rel: str) -> list:
        lines = (project / rel).read_text(encoding="utf-8").splitlines()
        return [(r["id"], r["sample"], r["answer"]) for r in map(json.loads, lines)]

    if answers(EG["predictions"]) == answers(EB["predictions"]):
        raise StageFailed("eval@grpo: every answer equals the base's: the GRPO updates did not change the model")


def run_step(project: Path, step: Step, env: dict, poll: bool, timeout: int) -> dict:
    if step.params:
        set_params(project, step.params)
    log = project / LOGS / slug(step)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, f"stages/{step.script}.py", *step.args]
    with GpuPeak(poll) as gpu:
        start = time.perf_counter()
        code = launch(cmd, project, env, str(log), timeout)
        wall = time.perf_counter() - start
    if code != 0:
        raise StageFailed(f"{step.name} ({step.backend}) failed with exit status {code} after {wall:.0f} s; "
                          f"last {TAIL_LINES} stderr lines ({log}.err):\n{tail(Path(f'{log}.err'))}")
    row = stage_row(project, step, wall, gpu.peak)
    if step.name == "eval@grpo":
        check_grpo_moved(project)
    if step.aside:
        set_aside(project, step.aside)
    return row


def run_steps(project: Path, result: dict, poll: bool, timeout: int, gpus: int = 0) -> None:
    env = stage_env(project)
    todo = steps(gpus)
    for i, step in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {step.name} ({step.backend}) ...", end=" ", flush=True)
        try:
            row = run_step(project, step, env, poll, timeout)
        except StageFailed:
            print("FAILED", flush=True)
            result["failed"] = f"{step.name} ({step.backend})"
            raise
        result["stages"].append(row)
        print(f"{row['wall_seconds']:.1f} s", flush=True)


# ---- the report ----------------------------------------------------------------------------------------------

def speedup(rows: list[dict]) -> float | None:
    """vLLM's sampling tokens/s over hf's."""
    tok = {r["backend"]: r["tokens_per_second"] for r in rows if r["stage"] == "sample@round1"}
    return round(tok["vllm"] / tok["hf"], 2) if tok.get("vllm") and tok.get("hf") else None


def cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    head = ("stage", "backend", "wall s", "tokens/s", "peak GPU MB", "results")
    body = [(r["stage"], r["backend"], f"{r['wall_seconds']:.1f}", cell(r["tokens_per_second"]),
             cell(r["peak_gpu_mb"]), ", ".join(f"{k}={cell(v)}" for k, v in r["results"].items())) for r in rows]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in (head, *body)]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def report(result: dict) -> None:
    if result["stages"]:
        print(f"\n{table(result['stages'])}")
    ratio = result["vllm_over_hf_tokens_per_second"]
    print(f"\nsampling tokens/s, vllm / hf: {cell(ratio)}  (train's tokens/s: trained tokens; eval records none)")
    print(f"total {result['total_seconds']:.0f} s, mode {result['mode']}, scratch project {result['workdir']}")
    if result["failed"]:
        print(f"FAILED at {result['failed']}; the scratch project is kept, its logs in {LOGS}/")


# ---- the run -------------------------------------------------------------------------------------------------

def scratch_dir(args: argparse.Namespace) -> Path:
    if args.workdir is None:
        return Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    if args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"{PROG_NAME}: --workdir {args.workdir} is not empty")
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args.workdir.resolve()


def environment(allow_cpu: bool) -> dict:
    """What the run ran on; raises RuntimeError when a stage could not import vLLM."""
    names = [] if allow_cpu else gpu_names()
    return {"python": sys.executable, **probe(stage_env(REPO)), "gpu": names[0] if names else None,
            "gpu_memory_mb_at_start": None if allow_cpu else gpu_memory_mb()}


def run(args: argparse.Namespace) -> int:
    """The smoke run; its exit status (0 ok, 1 a stage failed, 2 this machine cannot run it)."""
    if not args.allow_cpu:  # before anything else: the GPU set's CUDA runtime needs a driver that supports it
        driver, build = driver_cuda(), torch_build()
        problem = cuda_problem(driver, build)
        if problem:
            print(f"{PROG_NAME}: {problem}", file=sys.stderr)
            return 2
    try:
        env = environment(args.allow_cpu)
    except RuntimeError as err:
        print(f"{PROG_NAME}: {err}", file=sys.stderr)
        return 2
    project = scratch_dir(args)
    result = {"mode": "cpu-dry-run" if args.allow_cpu else "cuda", "workdir": str(project), **env, "stages": [],
              "failed": None}
    if not args.allow_cpu:
        result["driver_cuda"] = driver
    print(f"{PROG_NAME}: {copy_sources(project)} files copied to {project}", flush=True)
    make_data_root(project, args.cases, args.eval_cases)
    result["params"] = set_params(project, smoke_params(args))
    start = time.perf_counter()
    try:
        run_steps(project, result, poll=not args.allow_cpu, timeout=args.stage_timeout,
                  gpus=0 if args.allow_cpu else len(gpu_names()))
    except StageFailed as err:
        print(err, file=sys.stderr, flush=True)
        result["error"] = str(err)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["vllm_over_hf_tokens_per_second"] = speedup(result["stages"])
    report(result)
    if args.out:
        write_json(args.out, result, indent=2)
        print(f"wrote {args.out}")
    if result["failed"] is None and args.workdir is None and not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    return 1 if result["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = add_options(argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke",
                                             description=__doc__.split("\n\n")[0]))
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
