"""Many labelled cases on dask.distributed: `synthesize_dataset` maps `make_case` over the cases.

Where it runs: a `LocalCluster` of K worker processes on this machine (one task thread each, torch
threads = cores // K so workers do not oversubscribe the cores), an existing cluster by its scheduler
address, or the caller's own `distributed.Client` (a notebook's), which is used as it is and left open.
`workers=0` runs the same cases in a plain loop in this process (no dask). Workers must see `out_dir`
(a shared file system on a real cluster); the label maps travel to them through the scheduler.

Like every long piece of work in the engine, `synthesize_dataset` is a generator: it yields a
`BatchEvent` per finished case (done, skipped or failed) and returns a `BatchSummary`. Closing it (or
Ctrl-C while it waits) cancels what has not finished: running cases stop before their next network call
and write nothing, a local cluster is shut down, and what an interrupted commit could leave is swept, so
no half-written case remains. Complete cases are skipped on a rerun; a failing case is retried
`retries` times, then reported while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidVolumeError, MedgenError
from ..synthesis.options import SamplingOptions
from ..volume import Volume
from . import layout
from .augment import AugmentOptions
from .cases import CaseResult, CaseSettings, CaseSpec, CaseStopped, make_case


@dataclass
class BatchEvent:
    """One case finished: `step` of `total` cases are accounted for; `result` says how this one went."""

    step: int
    total: int
    message: str = ""
    result: CaseResult | None = None
    notice: str = ""


@dataclass
class BatchSummary:
    """What a batch run did: cases done now, skipped (complete already), failed (with why), and its time."""

    out_dir: str
    total: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cancelled: bool = False
    where: str = ""
    models_loaded: int = 0  # model loads paid by the workers (one per worker process)
    other_settings: list[str] = field(default_factory=list)  # skipped cases that an earlier run made differently
    dataset_json: str = ""
    results: list[CaseResult] = field(default_factory=list)

    def line(self) -> str:
        text = (f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed in "
                f"{self.seconds:.1f} s ({self.where})")
        if self.cancelled:
            text += "; stopped before the end: rerun the same command to finish"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "total": self.total, "done": len(self.done), "skipped": len(self.skipped),
            "failed": len(self.failed), "failures": self.failed, "seconds": round(self.seconds, 2),
            "cancelled": self.cancelled, "where": self.where, "models_loaded": self.models_loaded,
            "other_settings": len(self.other_settings), "dataset_json": self.dataset_json,
        }


# -- planning --------------------------------------------------------------------------------------------------
def plan_cases(sources: Sequence[tuple[str, Volume]], cases: int, seed: int = 0, prefix: str = "case") -> list[CaseSpec]:
    """Case k starts from input k modulo the number of inputs, with seed `seed + k`."""
    layout.check_case_id(f"{prefix}_0000")
    hashes = [volume.content_hash() for _, volume in sources]
    width = max(4, len(str(cases - 1)))
    return [
        CaseSpec(case_id=f"{prefix}_{k:0{width}d}", source_index=k % len(sources), source_name=sources[k % len(sources)][0],
                 source_sha256=hashes[k % len(sources)], seed=seed + k)
        for k in range(cases)
    ]


# distributed's nanny writes these into this process's environment before it spawns a worker and leaves them
# there: every later subprocess of the caller (a notebook's, a test's) would run with one BLAS thread.
_SPAWN_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """The caller's environment as it was after starting a LocalCluster (its workers keep their own)."""
    saved = {name: os.environ.get(name) for name in _SPAWN_ENVIRONMENT}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _read_sources(label_maps: Sequence[Volume | str | os.PathLike[str]]) -> list[tuple[str, Volume]]:
    from ..io import read_volume

    sources = []
    for k, item in enumerate(label_maps):
        if isinstance(item, Volume):
            sources.append((str(item.metadata.get("source", f"label map {k}")), item))
        else:
            sources.append((Path(item).name, read_volume(item)))
    return sources


def _check_sources(sources: list[tuple[str, Volume]], card: Any) -> None:
    for name, volume in sources:
        if not volume.is_label_map:
            raise InvalidVolumeError(f"{name}: holds non-integer values, so it is not a label map")
        if card.spatial_dims == 3 and volume.ndim == 2:
            raise InvalidVolumeError(f"{name}: model {card.name} is 3-D and needs 3-D label maps")
        card.label_schema.validate_label_map(volume.array, what=f"label map {name}")


def _model_spec(model: str | os.PathLike[str] | None) -> str | None:
    """A folder as an absolute path (workers may start elsewhere); a name as it is."""
    if model is None:
        return None
    path = Path(model)
    return str(path.resolve()) if path.exists() else str(model)


# -- running one case where the task lands ------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadShare:
    """How many torch threads a worker process takes: its machine's cores over the task threads there."""

    workers_per_host: int

    def threads(self) -> int:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        task_threads = 1
        try:
            from distributed import get_worker

            task_threads = max(1, int(get_worker().state.nthreads))
        except (ImportError, ValueError, AttributeError):
            pass
        return max(1, cores // (self.workers_per_host * task_threads))


@dataclass(frozen=True)
class ClusterStop:
    """Whether the run was stopped: a named `distributed.Event` that the client sets; looked at no more
    than every `every_s` seconds (each look is a round trip to the scheduler)."""

    name: str
    every_s: float = 1.0

    def __call__(self, fresh: bool = False) -> bool:
        now = time.monotonic()
        state = _STOP_LOOKS.setdefault(self.name, [0.0, False])
        if state[1] or (not fresh and now - state[0] < self.every_s):
            return bool(state[1])
        state[0] = now
        try:
            from distributed import Event

            state[1] = bool(Event(self.name).is_set())
        except Exception:  # noqa: BLE001 - no scheduler to ask: go on; the client cancels what it can
            state[1] = False
        return bool(state[1])


_STOP_LOOKS: dict[str, list] = {}


def run_case(out_dir: str, spec: CaseSpec, label_map: Volume, settings: CaseSettings, stop: ClusterStop | None,
             share: ThreadShare | None) -> CaseResult:
    """The task a worker runs: `make_case` with this worker's share of the cores."""
    return make_case(out_dir, spec, label_map, settings, stop=stop, torch_threads=share.threads() if share else None)


# -- the run ----------------------------------------------------------------------------------------------------
def synthesize_dataset(
    label_maps: Sequence[Volume | str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    cases: int,
    *,
    model: str | os.PathLike[str] | None = None,
    options: SamplingOptions | None = None,
    augment: AugmentOptions | str | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 2,
    scheduler: str | None = None,
    client: Any = None,
    retries: int = 1,
    prefix: str = "case",
) -> Generator[BatchEvent, None, BatchSummary]:
    """Write `cases` labelled cases into `out_dir` in nnU-Net v2's raw layout, on dask.distributed.

    `label_maps`: Volumes or files; case k starts from input k modulo their number, augmented with
    seed `seed + k` (which also seeds its noise). `options`: how to sample (its seed is replaced per case).
    Where: `client` (yours, left open), else `scheduler` (an address such as tcp://host:8786), else a
    LocalCluster of `workers` processes; `workers=0`: a plain loop in this process.
    Inputs and options are checked before anything starts (the project's errors).
    """
    from ..model.registry import find_model
    from ..synthesis.options import resolve_options

    if cases < 1:
        raise MedgenError(f"--cases must be at least 1, got {cases}")
    if retries < 0:
        raise MedgenError(f"retries must be 0 or more, got {retries}")
    if workers < 0:
        raise MedgenError(f"--workers must be 0 (a plain loop) or more, got {workers}")
    if not label_maps:
        raise MedgenError("give at least one label map")
    augment = augment if isinstance(augment, AugmentOptions) else AugmentOptions.parse(augment if augment is not None else "elastic,flip")
    card = find_model(model).card
    options = resolve_options(options, {"variants": 1, "preview_every": 0}, card)
    sources = _read_sources(label_maps)
    _check_sources(sources, card)
    out_dir = Path(out_dir).resolve()
    layout.prepare(out_dir)
    layout.sweep(out_dir)  # what an interrupted run left (no run may be writing here now)
    settings = CaseSettings(model=_model_spec(model), device=device, precision=precision, options=options, augment=augment)
    specs = plan_cases(sources, cases, seed, prefix)
    return _run(out_dir, card, sources, specs, settings, workers, scheduler, client, retries)


def _run(out_dir: Path, card: Any, sources: list[tuple[str, Volume]], specs: list[CaseSpec], settings: CaseSettings,
         workers: int, scheduler: str | None, client: Any, retries: int) -> Generator[BatchEvent, None, BatchSummary]:
    start = time.perf_counter()
    summary = BatchSummary(out_dir=str(out_dir), total=len(specs))
    fingerprint = settings.fingerprint()
    todo = []
    for spec in specs:
        record = layout.case_record(out_dir, spec.case_id)
        if record is None:
            todo.append(spec)
            continue
        summary.skipped.append(spec.case_id)
        summary.results.append(CaseResult(spec.case_id, "skipped"))
        if record.get("settings") != fingerprint or record.get("source_sha256") != spec.source_sha256:
            summary.other_settings.append(spec.case_id)
    extra = {"settings": fingerprint, "sources": [name for name, _ in sources]}

    def event(result: CaseResult, message: str, notice: str = "") -> BatchEvent:
        return BatchEvent(len(summary.done) + len(summary.skipped) + len(summary.failed), len(specs), message, result, notice)

    runner: Iterator[CaseResult] | None = None
    try:
        if summary.skipped:
            notice = ""
            if summary.other_settings:
                notice = (f"{len(summary.other_settings)} complete cases in {out_dir} were made with other settings or "
                          "inputs; they are kept (write to a new folder to make them all alike)")
            yield event(summary.results[-1], f"{len(summary.skipped)} cases complete already, skipped", notice)
        if todo:
            runner = _loop(out_dir, sources, todo, settings, retries) if workers == 0 and client is None and scheduler is None \
                else _cluster(out_dir, sources, todo, settings, workers, scheduler, client, retries, summary)
            for result in runner:
                summary.results.append(result)
                if result.status == "done":
                    summary.done.append(result.case_id)
                    summary.models_loaded += int(result.model_loaded)
                    message = f"{result.case_id} done in {result.seconds:.1f} s"
                else:
                    summary.failed[result.case_id] = result.error
                    message = f"{result.case_id} failed: {result.error}"
                yield event(result, message)
        elif not summary.where:
            summary.where = "nothing to do"
    except BaseException:
        summary.cancelled = True
        raise
    finally:
        if runner is not None:
            runner.close()  # cancels what has not finished (a closed run, Ctrl-C)
        summary.seconds = time.perf_counter() - start
        with contextlib.suppress(OSError):
            (out_dir / layout.STAGING).rmdir()  # only when empty: a remote worker may still be writing there
        summary.where = summary.where or ("a plain loop in this process" if workers == 0 and client is None and scheduler is None else "")
        try:
            summary.dataset_json = str(layout.write_dataset_json(out_dir, card, extra))
        except MedgenError:
            if not summary.cancelled:
                raise
    return summary


def _loop(out_dir: Path, sources: list[tuple[str, Volume]], specs: list[CaseSpec], settings: CaseSettings,
          retries: int) -> Iterator[CaseResult]:
    """The cases one after another in this process (no dask): the reference the distributed path is timed against."""
    for spec in specs:
        error = ""
        for _ in range(retries + 1):
            try:
                yield make_case(out_dir, spec, sources[spec.source_index][1], settings)
                break
            except MedgenError as failure:
                error = str(failure)
            except Exception as failure:  # noqa: BLE001 - reported with the case; the others go on
                error = f"{type(failure).__name__}: {failure}"
        else:
            yield CaseResult(spec.case_id, "failed", worker="this process", error=_attempts(error, retries))


def _attempts(error: str, retries: int) -> str:
    return f"{error} ({retries + 1} attempt{'s' if retries else ''})"


def _cluster(out_dir: Path, sources: list[tuple[str, Volume]], specs: list[CaseSpec], settings: CaseSettings,
             workers: int, scheduler: str | None, client: Any, retries: int, summary: BatchSummary) -> Iterator[CaseResult]:
    """The cases as dask tasks, results as they complete; on any exit what is unfinished is cancelled."""
    try:
        from distributed import Client, Event, LocalCluster, as_completed
    except ImportError:
        raise MedgenError("batch synthesis on a cluster needs dask.distributed: pip install distributed") from None

    own_client, cluster = None, None
    if client is None:
        if scheduler:
            try:
                own_client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as error:
                raise MedgenError(f"cannot reach the dask scheduler at {scheduler} ({error}); is the cluster up?") from None
            summary.where = f"the dask cluster at {scheduler}"
        else:
            workers = max(1, workers)
            with environment_kept():
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.ERROR)
            own_client = Client(cluster)
            summary.where = f"a LocalCluster of {workers} worker process{'es' if workers > 1 else ''}"
        client = own_client
    else:
        summary.where = "the given dask client"
    share = ThreadShare(workers) if cluster is not None else ThreadShare(_workers_per_host(client))
    stop = ClusterStop(f"medgen-batch-stop-{uuid.uuid4().hex}")
    futures: list[Any] = []
    by_key: dict[str, CaseSpec] = {}
    try:
        scattered = client.scatter([volume for _, volume in sources], broadcast=False, hash=False)
        token = uuid.uuid4().hex[:8]
        for spec in specs:
            key = f"medgen-case-{spec.case_id}-{token}"
            by_key[key] = spec
            futures.append(client.submit(run_case, str(out_dir), spec, scattered[spec.source_index], settings, stop, share,
                                         key=key, retries=retries, pure=False))
        for future in as_completed(futures):
            spec = by_key[future.key]
            if future.status == "finished":
                yield future.result()
            else:
                yield CaseResult(spec.case_id, "failed", error=_attempts(_message(future.exception()), retries))
            future.release()
    finally:
        unfinished = [f for f in futures if f.status not in ("finished", "error")]
        if unfinished:
            with contextlib.suppress(Exception):  # the cluster may be gone already
                Event(stop.name, client=client).set()  # running cases stop before their next network call
                client.cancel(unfinished, force=True)
        if own_client is not None:
            own_client.close()
        if cluster is not None:
            cluster.close()
            if unfinished:
                layout.sweep(out_dir)  # the workers are gone: nothing writes here any more


def _workers_per_host(client: Any) -> int:
    """The most worker processes any one machine of the cluster has (how many share its cores)."""
    try:
        hosts: dict[str, int] = {}
        for info in client.scheduler_info().get("workers", {}).values():
            host = str(info.get("host") or info.get("id"))
            hosts[host] = hosts.get(host, 0) + 1
        return max(hosts.values()) if hosts else 1
    except Exception:  # noqa: BLE001
        return 1


def _message(error: BaseException | None) -> str:
    if error is None:
        return "cancelled"
    if isinstance(error, CaseStopped | MedgenError):
        return str(error)
    name = type(error).__name__
    if name == "KilledWorker":
        return "the worker process running it died (out of memory?)"
    return f"{name}: {error}"


def run_synthesis(run: Generator[BatchEvent, None, BatchSummary], on_event: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Drive `synthesize_dataset(...)` to its end (a notebook's one-liner); returns its summary."""
    try:
        while True:
            event = next(run)
            if on_event is not None:
                on_event(event)
    except StopIteration as finished:
        return finished.value
    finally:
        run.close()


__all__ = ["BatchEvent", "BatchSummary", "ThreadShare", "plan_cases", "run_case", "run_synthesis", "synthesize_dataset"]
