"""When and where ``vsdsr-compare`` trains its runs: one at a time on the default device, or spread over several GPUs
(``--gpus 0 1``), one run per GPU at a time.

A comparison's runs are independent except the no-SR baseline "at equal wall time", which needs the reference
method's and the same-steps baseline's measured times. :func:`run_jobs` starts every job as soon as a slot is free
and the jobs it needs are done, in list order otherwise (so the list order is the priority); each ``ns-train`` sees
only its GPU (``CUDA_VISIBLE_DEVICES``). Wall times stay honest measurements: concurrent runs never share a GPU.

Import-light (no torch, no nerfstudio): the scheduling is tested with stand-in jobs.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Slot:
    """Where one run trains: a GPU of this process (index into its visible CUDA devices), or the default device."""

    gpu: Optional[int] = None
    """Index of the GPU as this process numbers them (``cuda:{gpu}``); None: nerfstudio's default device."""

    def env(self, environ: Mapping[str, str]) -> Dict[str, str]:
        """Environment changes for a subprocess that must see only this slot's GPU (none for the default slot)."""
        if self.gpu is None:
            return {}
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip():
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            if self.gpu >= len(ids):
                raise ValueError(f"GPU {self.gpu} is not among CUDA_VISIBLE_DEVICES={visible!r}")
            return {"CUDA_VISIBLE_DEVICES": ids[self.gpu]}
        return {"CUDA_VISIBLE_DEVICES": str(self.gpu)}

    def torch_device(self, requested: str) -> str:
        """The torch device for in-process work on this slot: ``cuda:{gpu}`` when ``requested`` is ``auto`` or
        ``cuda`` and the slot is a GPU; ``requested`` otherwise."""
        if self.gpu is not None and requested in ("auto", "cuda"):
            return f"cuda:{self.gpu}"
        return requested

    def describe(self) -> str:
        """Short text for logs."""
        return "default device" if self.gpu is None else f"GPU {self.gpu}"


def slots_for(gpus: Sequence[int]) -> List[Slot]:
    """One slot per GPU index, or the single default slot when ``gpus`` is empty."""
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus {list(gpus)} names a GPU twice")
    return [Slot(int(g)) for g in gpus] or [Slot()]


@dataclass
class Job(Generic[T]):
    """One unit of work of the comparison (usually one ``ns-train`` run)."""

    name: str
    """Unique name (the run's name); other jobs name it in ``needs``."""
    work: Callable[[Slot, Mapping[str, T]], T]
    """Does the work on the slot it is given, with the results of the jobs done so far (those it ``needs`` among
    them), and returns its result."""
    needs: Tuple[str, ...] = ()
    """Jobs that must be done before this one starts (their results are read by ``work``)."""


class JobError(RuntimeError):
    """A job could not run (a failed or unknown job it needs)."""


def run_jobs(jobs: Sequence[Job[T]], slots: Sequence[Slot]) -> Dict[str, T]:
    """Run ``jobs`` with at most one job per slot at a time; returns ``{name: result}``.

    A job starts when a slot is free and every job in its ``needs`` is done; among the jobs that could start, the
    first in ``jobs`` does. When a job raises, no new job starts, the running ones finish (their runs are then
    complete, and reused by the next invocation), and the first error is raised.
    """
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names repeat: {names}")
    for job in jobs:
        unknown = [n for n in job.needs if n not in names]
        if unknown:
            raise JobError(f"job {job.name} needs unknown job(s) {unknown}")
    if not slots:
        raise ValueError("no slots to run jobs on")
    results: Dict[str, T] = {}
    pending: List[Job[T]] = list(jobs)
    free: List[Slot] = list(slots)
    running: Dict[Future, Tuple[Job[T], Slot]] = {}
    error: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="compare-run") as pool:
        while pending or running:
            if error is None:
                for job in _startable(pending, results):
                    if not free:
                        break
                    slot = free.pop(0)
                    pending.remove(job)
                    running[pool.submit(job.work, slot, dict(results))] = (job, slot)
            if not running:
                if error is None and pending:  # nothing runs and nothing can start: unsatisfiable needs
                    raise JobError(f"jobs {[j.name for j in pending]} wait for jobs that cannot finish")
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                job, slot = running.pop(future)
                free.append(slot)
                free.sort(key=lambda s: slots.index(s))  # deterministic: lowest free slot first
                try:
                    value = future.result()
                except BaseException as err:  # noqa: BLE001 (re-raised below once the running jobs are done)
                    error = error or err
                    continue
                results[job.name] = value
    if error is not None:
        raise error
    return results


def _startable(pending: Sequence[Job[T]], results: Mapping[str, T]) -> List[Job[T]]:
    return [job for job in pending if all(n in results for n in job.needs)]


def subprocess_env(slot: Slot, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of an ``ns-train`` subprocess on ``slot``: ``base`` (default ``os.environ``) plus the slot's
    ``CUDA_VISIBLE_DEVICES``."""
    environ = dict(os.environ if base is None else base)
    environ.update(slot.env(environ))
    return environ
