"""The I3DS schedule: where upscaling stages go, and that the last one is always synchronised."""

import pytest

from vsdsr_nerfstudio.i3ds_pipeline import upscaling_stage_steps


def test_default_schedule():
    assert upscaling_stage_steps(2000, 2000, 4, final_step=10_000) == [2000, 4000, 6000, 8000]


def test_cycles_without_a_full_sync_are_dropped():
    # DiSR's 100k schedule: its 4th stage (at 95k in their count) would never be synchronised.
    assert upscaling_stage_steps(20_000, 20_000, 4, final_step=90_000) == [20_000, 40_000, 60_000]
    steps = upscaling_stage_steps(20, 10, 5, final_step=45)
    assert steps == [20, 30]
    assert all(s + 10 <= 45 for s in steps)


def test_no_cycles_and_bad_values():
    assert upscaling_stage_steps(2000, 2000, 0, final_step=10_000) == []
    assert upscaling_stage_steps(2000, 2000, 3, final_step=3999) == []
    with pytest.raises(ValueError):
        upscaling_stage_steps(-1, 10, 1, final_step=100)
    with pytest.raises(ValueError):
        upscaling_stage_steps(10, 0, 1, final_step=100)
