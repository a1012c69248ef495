"""lawshift/engines/raypool.py and lawshift/engines/reaper.py: the Ray pool behind `sample.workers` / `eval.workers`.

Two workers give the records of one (hf on CPU, sample and eval, joining a running cluster through RAY_ADDRESS);
a SIGKILLed driver leaves no Ray process behind and its rerun continues the journal; a worker killed mid-piece has
its piece run on another; a request that fails names its prompt. The tests share one local Ray cluster (`cluster`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import ENV, EV, R1, REPO, read_json, run_stage, set_params, stage_cmd
from test_stale import records

from lawshift.engines import reaper
from lawshift.engines.generation import BackendSpec, Completion, GenerationSettings, PromptResult
from lawshift.engines.raypool import RayPool, RequestFailed, pack, pieces, unpack

TESTS = Path(__file__).resolve().parent
GEN = GenerationSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=8)


class EchoEngine:
    """An engine whose answers are a function of (prompt, seed, j): what the pool must hand back in order. It
    writes `<prompt>.started` in `marks` when a call begins and sleeps `delay`, so a test can kill it mid-piece;
    a prompt containing FAIL raises."""

    name, device = "echo", "cpu"

    def __init__(self, marks: str = "", delay: float = 0.0, **_):
        self.marks, self.delay = marks, delay

    def generate(self, prompts, settings, seeds):
        if self.marks:
            for p in prompts:
                Path(self.marks, f"{p}.started").touch()
        time.sleep(self.delay)
        if any("FAIL" in p for p in prompts):
            raise ValueError("refused: FAIL in the prompt")
        return [PromptResult(len(p), [Completion(f"{p}|{s + j}", j + 1, True) for j in range(settings.n)])
                for p, s in zip(prompts, seeds, strict=True)]


def echo_factory(**spec) -> EchoEngine:
    return EchoEngine(marks=os.environ.get("ECHO_MARKS", ""), delay=float(os.environ.get("ECHO_DELAY", "0")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray cluster for this module's tests (`ray start --head`): its address, and the environment a
    stage joins it with. Its workers import this checkout, this test module and the modules it imports from tests/."""
    temp = tmp_path_factory.mktemp("ray")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), str(TESTS.parent)]),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0",
           "ECHO_MARKS": str(temp), "ECHO_DELAY": "0.5"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = subprocess.run([ray_bin, "start", "--head", "--num-cpus", "4", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={temp / 'session'}"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    address = read_address(temp / "session")
    yield {"address": address, "env": {**env, "RAY_ADDRESS": address}, "marks": temp}
    reaper.reap(session_processes(temp / "session"))  # this cluster only: `ray stop` would end every Ray here


def session_processes(session: Path) -> dict[int, float]:
    """The processes of the Ray cluster whose temp dir is `session` (its path is in their command lines)."""
    found = {}
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        if any(str(session) in arg for arg in proc.info["cmdline"] or ()):
            found[proc.pid] = proc.info["create_time"]
    return found


def read_address(session: Path) -> str:
    """The address `ray start` wrote for this session (`ray_current_cluster` in its temp dir)."""
    return (session / "ray_current_cluster").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("count, size, expected", [
    (0, 4, []), (3, 4, [range(0, 3)]), (8, 4, [range(0, 4), range(4, 8)]), (9, 4, [range(0, 4), range(4, 8),
                                                                                   range(8, 9)]),
])
def test_pieces(count, size, expected):
    assert pieces(count, size) == expected


def test_pack_then_unpack_gives_the_same_files(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    files = pack(str(src))
    out = Path(unpack(files, tmp_path / "copy"))
    assert sorted(files) == ["config.json", "sub/weights.bin"]
    assert (out / "sub" / "weights.bin").read_bytes() == bytes(range(256)) and pack(str(out)) == files
    assert pack(None) is None


@pytest.fixture
def driver(cluster, monkeypatch):
    """This test process as a Ray driver on the module's cluster; disconnected afterwards."""
    import ray

    monkeypatch.setenv("RAY_ADDRESS", cluster["address"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the test cluster's (a real one's token: docs/scaling.md)
    yield cluster
    ray.shutdown()


PROMPTS = [f"p{i}" for i in range(8)]
SEEDS = list(range(100, 108))
SPEC = BackendSpec("echo", "unused", "cpu", 0, 0)


@pytest.mark.slow
def test_a_worker_killed_mid_piece_has_its_piece_run_on_another(driver, capfd):
    pool = RayPool(echo_factory, SPEC, workers=2, piece=2)
    results = {}
    thread = threading.Thread(target=lambda: results.update(out=pool.generate(PROMPTS, GEN, SEEDS)))
    thread.start()
    mark = driver["marks"] / "p0.started"  # the first piece goes to the first worker
    deadline = time.monotonic() + 60
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pool.pids[0], signal.SIGKILL)  # mid-piece: the engine sleeps half a second per piece
    thread.join(timeout=120)
    assert results["out"] == EchoEngine().generate(PROMPTS, GEN, SEEDS)  # every answer, in prompt order
    assert "a worker died" in capfd.readouterr().err and len(pool.workers) == 1
    pool.close()


@pytest.mark.slow
def test_a_failing_request_names_its_prompt_and_its_case(driver, tmp_path):
    from lawshift.core.files import InputError
    from lawshift.core.params import SampleParams
    from lawshift.sample.sampling import Job, sample
    from lawshift.task.data import training_cases

    pool = RayPool(echo_factory, SPEC, workers=2, piece=2)
    with pytest.raises(RequestFailed) as err:
        pool.generate(["a", "b", "c", "FAIL-d", "e"], GEN, [1, 2, 3, 4, 5])
    assert err.value.index == 3 and "refused: FAIL in the prompt" in err.value.message
    cases = training_cases(REPO / "data" / "lawshift-sample")[:4]
    job = Job(cases, [0, 1, 2, 3], ["x0", "x1", "x2", "FAIL-x3"], {"run": 1}, seed=0, source="train.json")
    with pytest.raises(InputError, match=r"^train.json: record 3: sampling failed on a Ray worker: ValueError"):
        sample(job, pool, SampleParams(num_samples=2, batch_size=2, workers=2), tmp_path / "samples.jsonl")
    pool.close()


def outputs(root: Path) -> dict[str, bytes]:
    files = [R1["samples"], R1["sample_metrics"], EV["base"]["predictions"], EV["base"]["metrics"]]
    return {f: (root / f).read_bytes() for f in files}


@pytest.mark.slow
def test_two_workers_give_the_records_of_one(project, cluster):
    root = project(n_train=8, params={"sample": {"num_samples": 3, "batch_size": 2},
                                      "eval": {"batch_size": 4, "num_samples": 2, "temperature": 0.7}})
    for stage in ("sample", "eval"):
        assert run_stage(root, stage).returncode == 0
    one = outputs(root)
    for f in one:
        (root / f).unlink()
    set_params(root, {"sample": {"workers": 2}, "eval": {"workers": 2}})
    for stage in ("sample", "eval"):  # joins the running cluster through RAY_ADDRESS
        proc = run_stage(root, stage, env=cluster["env"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs(root) == one


def ray_processes(proc: psutil.Process) -> dict[int, float]:
    return {p.pid: p.create_time() for p in proc.children(recursive=True) if p.is_running()}


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_and_its_rerun_continues(project):
    root = project(n_train=16, params={"sample": {"num_samples": 3, "batch_size": 2, "workers": 2}})
    partial = root / (R1["samples"] + ".partial")
    stage = subprocess.Popen(stage_cmd("sample"), cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    noted, driver = {}, psutil.Process(stage.pid)
    while records(partial) < 2 and stage.poll() is None:  # a local Ray of its own: its processes are below it
        noted |= ray_processes(driver)
        time.sleep(0.05)
    stage.kill()
    assert stage.wait() == -signal.SIGKILL and len(noted) >= 4  # gcs_server, raylet, two workers at least
    deadline = time.monotonic() + 30
    while (left := reaper.alive(noted)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], [p.cmdline() for p in left]
    before = partial.read_bytes().splitlines()[1:]
    set_params(root, {"sample": {"workers": 1}})  # another number of workers may continue the journal
    rerun = run_stage(root, "sample")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    recs = [json.loads(x) for x in (root / R1["samples"]).read_bytes().splitlines()]
    assert [r["index"] for r in recs] == list(range(16))
    assert {json.loads(x)["index"] for x in before} <= {r["index"] for r in recs}
    assert read_json(root / R1["sample_time"])["resumed_cases"] == len(before)


def test_the_reaper_kills_what_a_killed_driver_started(tmp_path):
    code = ("import subprocess, sys, time; "
            "kids = [subprocess.Popen(['sleep', '300']) for _ in range(2)]; "
            "print(' '.join(str(k.pid) for k in kids), flush=True); time.sleep(300)")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    kids = [int(x) for x in driver.stdout.readline().split()]
    watcher = reaper.start(driver.pid)
    time.sleep(2 * reaper.POLL + 0.5)  # it has noted the children
    driver.kill()
    driver.wait()
    assert watcher.wait(timeout=30) == 0
    assert not any(psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE for k in kids)
