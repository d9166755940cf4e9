"""``vsdsr-compare --gpus``: the job scheduler (``tools/compare_schedule.py``) with stand-in jobs that record when and
where they ran, and the ``CUDA_VISIBLE_DEVICES`` each ``ns-train`` subprocess would get."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

import pytest

from vsdsr_nerfstudio.tools.compare_schedule import Job, JobError, Slot, run_jobs, slots_for, subprocess_env


class Recorder:
    """Stand-in work: sleeps, records (start, end, slot) per job and the peak number running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: Dict[str, Tuple[float, float, Slot]] = {}
        self.running = 0
        self.peak = 0
        self.per_slot: Dict[Slot, int] = {}
        self.slot_overlap = False

    def job(self, name: str, seconds: float, needs: Tuple[str, ...] = (), fail: bool = False) -> Job[str]:
        def work(slot: Slot, done) -> str:
            assert all(n in done for n in needs)  # the results of the jobs it needs are handed over
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
                self.per_slot[slot] = self.per_slot.get(slot, 0) + 1
                self.slot_overlap |= self.per_slot[slot] > 1
            start = time.perf_counter()
            time.sleep(seconds)
            with self.lock:
                self.running -= 1
                self.per_slot[slot] -= 1
                self.spans[name] = (start, time.perf_counter(), slot)
            if fail:
                raise RuntimeError(f"{name} failed")
            return f"result of {name}"

        return Job(name, work, needs)


def test_two_gpus_run_two_jobs_at_once_and_a_dependent_job_waits_for_both():
    rec = Recorder()
    sr2d_done = threading.Event()
    ref = rec.job("ref", 0.0)
    held = Job(
        "ref", lambda slot, done: (sr2d_done.wait(timeout=20), ref.work(slot, done))[1]
    )  # ref holds GPU 0 meanwhile
    sr2d = rec.job("sr2d", 0.01)
    jobs = [
        held,
        rec.job("same-steps", 0.01),
        rec.job("same-time", 0.01, needs=("ref", "same-steps")),
        rec.job("other", 0.01),
        Job("sr2d", lambda slot, done: (sr2d.work(slot, done), sr2d_done.set())[0]),
    ]
    results = run_jobs(jobs, slots_for([0, 1]))
    assert sr2d_done.is_set() and results == {job.name: f"result of {job.name}" for job in jobs}
    assert not rec.slot_overlap  # never two jobs on one GPU (ref waited on GPU 0 while sr2d ran: concurrency)
    spans = rec.spans
    assert spans["same-time"][0] >= max(spans["ref"][1], spans["same-steps"][1])
    # while ref holds GPU 0, GPU 1 takes the startable jobs in list order: same-steps, other (same-time cannot start
    # yet), sr2d; same-time runs once ref is done
    assert spans["ref"][2] == Slot(0)
    assert [spans[n][2] for n in ("same-steps", "other", "sr2d")] == [Slot(1)] * 3
    assert spans["same-steps"][1] <= spans["other"][0] and spans["other"][1] <= spans["sr2d"][0]
    assert spans["sr2d"][1] <= spans["ref"][0] <= spans["ref"][1] <= spans["same-time"][0]


def test_one_slot_runs_in_list_order_skipping_jobs_that_must_wait():
    rec = Recorder()
    order: List[str] = []
    jobs = [rec.job("a", 0.01, needs=("b",)), rec.job("b", 0.01), rec.job("c", 0.01)]
    jobs = [
        Job(j.name, (lambda w, n: lambda s, d: (order.append(n), w(s, d))[1])(j.work, j.name), j.needs) for j in jobs
    ]
    run_jobs(jobs, slots_for([]))
    assert order == ["b", "a", "c"]  # a waits for b, then has priority over c
    assert rec.peak == 1


def test_a_failed_job_stops_new_starts_lets_running_ones_finish_and_is_raised():
    rec = Recorder()
    jobs = [
        rec.job("slow", 0.3),
        rec.job("bad", 0.02, fail=True),
        rec.job("after", 0.01),
        rec.job("dep", 0.01, ("bad",)),
    ]
    with pytest.raises(RuntimeError, match="bad failed"):
        run_jobs(jobs, slots_for([0, 1]))
    assert "slow" in rec.spans  # finished, not abandoned (its run is complete and reusable)
    assert "after" not in rec.spans and "dep" not in rec.spans


def test_unknown_needs_and_duplicate_names_are_refused():
    rec = Recorder()
    with pytest.raises(JobError, match="unknown"):
        run_jobs([rec.job("a", 0, needs=("missing",))], slots_for([]))
    with pytest.raises(ValueError, match="repeat"):
        run_jobs([rec.job("a", 0), rec.job("a", 0)], slots_for([]))
    with pytest.raises(ValueError, match="twice"):
        slots_for([1, 1])
    with pytest.raises(JobError, match="cannot finish"):
        run_jobs([rec.job("a", 0, needs=("b",)), rec.job("b", 0, needs=("a",))], slots_for([]))


def test_each_subprocess_sees_only_its_gpu():
    assert subprocess_env(Slot(1), {"PATH": "/bin"}) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    # indices are this process' numbering: they map through an existing CUDA_VISIBLE_DEVICES
    assert subprocess_env(Slot(1), {"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"
    with pytest.raises(ValueError, match="not among"):
        subprocess_env(Slot(2), {"CUDA_VISIBLE_DEVICES": "4,6"})
    assert subprocess_env(Slot(), {"CUDA_VISIBLE_DEVICES": "3"}) == {"CUDA_VISIBLE_DEVICES": "3"}  # default: as is
    assert Slot(1).torch_device("auto") == "cuda:1" and Slot(1).torch_device("cpu") == "cpu"
    assert Slot().torch_device("auto") == "auto"
