"""The SR state files of a run: atomic writes that survive a kill, and finding the newest complete stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from vsdsr_nerfstudio.data.files import atomic_write
from vsdsr_nerfstudio.pipeline.state import (
    LATEST,
    SR_STATE_DIR,
    adopt_stage_file,
    latest_stage_file,
    load_stage_state,
    save_stage_state,
)


def _state(cycle: int, fill: int) -> dict:
    return {
        "cycle": cycle,
        "step": 100 * cycle,
        "hr_images": torch.full((2, 8, 8, 3), fill, dtype=torch.uint8),
        "written": torch.ones(2, dtype=torch.bool),
    }


def test_save_find_load_round_trip(tmp_path):
    assert latest_stage_file(tmp_path) is None
    save_stage_state(tmp_path, 1, _state(1, 10))
    path = save_stage_state(tmp_path, 2, _state(2, 20))
    assert latest_stage_file(tmp_path) == path
    assert (tmp_path / SR_STATE_DIR / LATEST).read_text() == "stage_002.pt"
    state = load_stage_state(path)
    assert state["cycle"] == 2 and torch.equal(state["hr_images"], _state(2, 20)["hr_images"])


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = save_stage_state(tmp_path, 1, _state(1, 10))
    before = path.read_bytes()

    def broken(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [LATEST, "stage_001.pt"]


def test_latest_falls_back_to_scanning_when_the_pointer_is_stale(tmp_path):
    save_stage_state(tmp_path, 1, _state(1, 10))
    save_stage_state(tmp_path, 2, _state(2, 20))
    (tmp_path / SR_STATE_DIR / LATEST).write_text("stage_009.pt")  # points at nothing
    assert latest_stage_file(tmp_path).name == "stage_002.pt"
    (tmp_path / SR_STATE_DIR / LATEST).unlink()
    assert latest_stage_file(tmp_path).name == "stage_002.pt"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_in_the_middle_of_a_write_never_leaves_a_truncated_stage(tmp_path):
    """A process killed while it writes stage 2 leaves stage 1 as the newest complete, loadable stage."""
    save_stage_state(tmp_path, 1, _state(1, 10))
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vsdsr_nerfstudio.data.files import atomic_write
        from vsdsr_nerfstudio.pipeline.state import stage_file_name, SR_STATE_DIR

        def slow(handle):
            for _ in range(10_000):
                handle.write(b"x" * 4096)
                handle.flush()
                print("writing", flush=True)
                time.sleep(0.01)

        atomic_write(Path({str(tmp_path)!r}) / SR_STATE_DIR / stage_file_name(2), slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # let it write a few chunks to the temporary file
            assert proc.stdout.readline().startswith("writing"), "the writer did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    folder = tmp_path / SR_STATE_DIR
    leftovers = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and leftovers[0].stat().st_size > 0, "the kill should have hit the temporary file"
    assert not (folder / "stage_002.pt").exists()
    newest = latest_stage_file(tmp_path)
    assert newest is not None and newest.name == "stage_001.pt"
    assert load_stage_state(newest)["cycle"] == 1


def test_adopting_a_resumed_stage_copies_it_into_the_new_run(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    source = save_stage_state(old, 1, _state(1, 10))
    target = adopt_stage_file(source, new)
    assert target == new / SR_STATE_DIR / "stage_001.pt"
    assert latest_stage_file(new) == target and target.read_bytes() == source.read_bytes()
    assert adopt_stage_file(target, new) == target  # adopting in place is a no-op
