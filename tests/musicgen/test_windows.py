"""Planning clips longer than the model's context as overlapping windows."""

import itertools

import pytest

from handler.musicgen.windows import EXTEND_STRIDE_SECONDS, WINDOW_SECONDS, Window, WindowShape

MUSICGEN = WindowShape.for_model(frame_rate=50, max_positions=2048, num_codebooks=4)


def test_musicgen_windows_are_30_s_striding_18_s() -> None:
    assert WINDOW_SECONDS == 30
    assert EXTEND_STRIDE_SECONDS == 18
    assert WindowShape(frames=1500, overlap=600) == MUSICGEN


def test_a_model_with_fewer_positions_gets_shorter_windows_and_overlaps_in_proportion() -> None:
    assert WindowShape.for_model(frame_rate=50, max_positions=504, num_codebooks=4) == WindowShape(500, 200)


@pytest.mark.parametrize("seconds", [1, 10, 30])
def test_up_to_30_s_is_one_window_without_a_prompt(seconds: int) -> None:
    assert MUSICGEN.plan(50 * seconds) == [Window(start=0, frames=50 * seconds, prompt=0)]


def test_45_and_75_s_continue_each_window_from_the_last_12_s_of_the_one_before() -> None:
    assert MUSICGEN.plan(45 * 50) == [Window(0, 1500, 0), Window(900, 1350, 600)]
    assert MUSICGEN.plan(75 * 50) == [
        Window(0, 1500, 0),
        Window(900, 1500, 600),
        Window(1800, 1500, 600),
        Window(2700, 1050, 600),
    ]


@pytest.mark.parametrize("seconds", [31, 45, 48, 49, 75, 120, 300])
def test_windows_cover_the_clip_exactly_each_prompted_by_the_previous_ones_end(seconds: int) -> None:
    frames = 50 * seconds
    windows = MUSICGEN.plan(frames)
    assert windows[0] == Window(0, 1500, 0)
    assert windows[-1].end == frames
    for before, window in itertools.pairwise(windows):
        assert window.prompt == MUSICGEN.overlap
        assert window.start == before.end - window.prompt  # its prompt is the previous window's last frames
        assert window.prompt < window.frames <= MUSICGEN.frames
    new_frames = sum(window.frames - window.prompt for window in windows)
    assert new_frames == frames


def test_decode_steps_are_each_windows_new_frames_plus_the_delay_pattern() -> None:
    assert MUSICGEN.decode_steps(30 * 50, num_codebooks=4) == 1503
    assert MUSICGEN.decode_steps(45 * 50, num_codebooks=4) == 1503 + (750 + 3)
    assert MUSICGEN.prompt_frames(45 * 50) == 600
    assert MUSICGEN.prompt_frames(30 * 50) == 0


def test_an_empty_clip_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        MUSICGEN.plan(0)
