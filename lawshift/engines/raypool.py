"""A pool of generation backends on Ray, for `sample.workers` / `eval.workers` > 1: the stage is its driver.

    pool = RayPool(make_backend, spec, workers=2, piece=8)  # joins `cluster` or RAY_ADDRESS, else starts a local Ray
    outs = pool.generate(prompts, settings, seeds)          # pieces to the free workers, results in prompt order
    pool.close()                                            # the workers go; a local Ray shuts down

Each worker builds one backend from `spec` with the factory it is given. The driver computes every seed and stays
the only writer of its journal. A worker that dies mid-piece has its piece run again on another; a request that
fails raises `RequestFailed` naming its prompt. docs/scaling.md says how to run it on a cluster.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from lawshift.engines import reaper
from lawshift.engines.generation import BackendSpec, GenerationSettings, PromptResult

START_TIMEOUT = 900  # seconds for every worker to load its model


class RequestFailed(RuntimeError):
    """A request of a `generate` call failed on its worker: `index` is its position among the call's prompts."""

    def __init__(self, index: int, message: str):
        super().__init__(index, message)  # both in args: the exception crosses processes pickled
        self.index, self.message = index, message

    def __str__(self) -> str:
        return f"request {self.index}: {self.message}"


def pieces(count: int, size: int) -> list[range]:
    """The call's prompts cut into consecutive pieces of `size` (the last may be shorter)."""
    return [range(start, min(start + size, count)) for start in range(0, count, max(size, 1))]


def pack(path: str | None) -> dict[str, bytes] | None:
    """A model directory as {relative path: bytes}, links followed: what a worker without the filesystem gets."""
    if path is None:
        return None
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack(files: dict[str, bytes], dst: Path) -> str:
    for rel, data in files.items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(data)
    return str(dst)


class Worker:
    """One backend in one Ray actor process (Ray makes this class an actor in `RayPool`)."""

    def __init__(self, factory: Callable, spec: BackendSpec, shipped: dict | None = None):
        import lawshift  # noqa: F401  (first: the numerics pins and GPU settings before torch loads)

        self.scratch = None
        if shipped is not None:  # no shared filesystem: the models came as bytes through the object store
            self.scratch = Path(tempfile.mkdtemp(prefix="lawshift-worker-"))
            spec = replace(spec, base=unpack(shipped["base"], self.scratch / "base"),
                           adapter=shipped["adapter"] and unpack(shipped["adapter"], self.scratch / "adapter"))
        self.backend = factory(**asdict(spec))

    def pid(self) -> int:
        return os.getpid()

    def device(self) -> str:
        return str(self.backend.device)

    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: list[int]) -> list[PromptResult]:
        try:
            return self.backend.generate(prompts, settings, seeds)
        except Exception:
            for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):  # which request it was
                try:
                    self.backend.generate([prompt], settings, [seed])
                except Exception as err:
                    raise RequestFailed(i, f"{type(err).__name__}: {err}") from None
            raise

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def connect(workers: int, cluster: str) -> bool:
    """Join the cluster `cluster` or RAY_ADDRESS names, else start a local Ray sized to the workers, without a
    dashboard. Returns whether this process started Ray (and so shuts it down)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report
    if ray.is_initialized():  # this process is already a driver (a test, a notebook): use its Ray
        return False
    address = cluster or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True)
        return False
    # Ray starts its workers at niceness 15: beside any other load they starve (the engines are the stage's work).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, configure_logging=False,
             log_to_driver=True)
    reaper.start(os.getpid())  # Ray's agents would outlive a SIGKILLed stage
    return True


class RayPool:
    """`workers` actors each holding one backend; implements the Backend protocol's `generate`."""

    name = "ray"

    def __init__(self, factory: Callable, spec: BackendSpec, workers: int, piece: int, cluster: str = "",
                 ship_models: bool = False):
        import ray

        self.spec, self.piece = spec, piece
        self.name = f"{spec.kind}×{workers}"
        self.started = connect(workers, cluster)
        wants = spec.tensor_parallel_size if spec.kind == "vllm" else int(spec.device.startswith("cuda"))
        gpus = wants if ray.cluster_resources().get("GPU", 0) else 0  # a CPU-only cluster runs them on CPU
        actor = ray.remote(Worker).options(num_cpus=1, num_gpus=gpus, max_restarts=0)
        shipped = {"base": pack(spec.base), "adapter": pack(spec.adapter)} if ship_models else None
        shipped_ref = ray.put(shipped) if shipped else None
        self.workers = [actor.remote(factory, spec, shipped_ref) for _ in range(workers)]
        try:  # every engine is up before the first call
            self.pids = ray.get([w.pid.remote() for w in self.workers], timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the {workers} Ray workers did not start within {START_TIMEOUT} s: does the cluster "
                               f"have {workers} x {gpus} GPU(s) free? (`ray status`)") from None
        self.device = ray.get(self.workers[0].device.remote())

    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: Sequence[int]) -> list[PromptResult]:
        """Every piece on whichever live worker is free; a piece whose worker died runs again on another."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        size = self.piece or -(-len(prompts) // len(self.workers))  # 0: an even share per worker
        todo, done, running = list(pieces(len(prompts), size)), {}, {}
        idle = list(self.workers)
        while todo or running:
            while todo and idle:
                worker, part = idle.pop(0), todo.pop(0)
                ref = worker.generate.remote([prompts[i] for i in part], settings, [seeds[i] for i in part])
                running[ref] = (worker, part)
            if not running:
                raise RuntimeError("every Ray worker died; the run stops here (rerun to continue)")
            [ref], _ = ray.wait(list(running), num_returns=1)
            worker, part = running.pop(ref)
            try:
                done[part.start] = ray.get(ref)
            except RayActorError:  # the worker's process died: its piece goes back in the queue
                self.workers.remove(worker)
                todo.insert(0, part)
                print(f"ray pool: a worker died; its {len(part)} prompt(s) run again on another "
                      f"({len(self.workers)} left)", file=sys.stderr)
                continue
            except RayTaskError as err:
                if isinstance(err.cause, RequestFailed):
                    raise RequestFailed(part.start + err.cause.index, err.cause.message) from None
                raise RuntimeError(f"a Ray worker failed: {err.cause!r}") from None
            idle.append(worker)
        return [result for start in sorted(done) for result in done[start]]

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.get([w.close.remote() for w in self.workers])
            for w in self.workers:
                ray.kill(w)
            if self.started:
                ray.shutdown()
