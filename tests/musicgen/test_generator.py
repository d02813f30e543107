"""The transformers engine over the tiny model."""

import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.generation import GenerationParams
from handler.musicgen.generator import (
    ENGINE_NICENESS,
    ModelUnavailableError,
    MusicgenGenerator,
    decode_steps,
    on_engine_thread,
)
from handler.musicgen.model import NATIVE_STEPS_PER_CALL


def params(**overrides: object) -> GenerationParams:
    values: dict[str, object] = {
        "prompt": "ambient synth pads",
        "duration": 1,
        "guidance_scale": 3.0,
        "temperature": 1.0,
        "seed": 3,
    }
    values.update(overrides)
    return GenerationParams(**values)  # type: ignore[arg-type]


def test_decode_steps_include_the_codebook_delay() -> None:
    assert decode_steps(10, 50, 4) == 503
    assert decode_steps(30, 50, 4) == 1503


def test_output_is_exactly_the_requested_length(generator: MusicgenGenerator) -> None:
    audio = generator.generate(params(duration=2))
    assert audio.dtype == np.float32
    assert audio.shape == (1, 2 * generator.sample_rate)


def test_decode_steps_past_one_window_count_each_windows_new_frames() -> None:
    assert decode_steps(45, 50, 4) == 1503 + 753
    assert decode_steps(120, 50, 4) == 1503 + 5 * 903  # 30 s, then 18 s a window


def test_a_clip_past_one_window_is_exactly_as_long_and_reports_progress_across_its_windows(
    generator: MusicgenGenerator,
) -> None:
    seen: list[float] = []
    audio = generator.generate(params(duration=45, seed=5), on_progress=seen.append)
    assert audio.shape == (1, 45 * generator.sample_rate)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    # Both windows' steps count: the first window alone would end at two thirds of the decode.
    steps = decode_steps(45, 50, 4)
    assert len(seen) >= math.ceil(steps / NATIVE_STEPS_PER_CALL)
    assert sum(0.6 < fraction < 0.95 for fraction in seen) >= 753 // NATIVE_STEPS_PER_CALL


def test_takes_are_distinct_clips_reproducible_by_their_seeds(generator: MusicgenGenerator) -> None:
    audio = generator.generate(params(seed=20, takes=3))
    assert audio.shape == (3, generator.sample_rate)
    assert len({take.tobytes() for take in audio}) == 3
    np.testing.assert_array_equal(generator.generate(params(seed=20, takes=3)), audio)
    # Take j is seeded seed + j: the same clip as the first take of a request seeded so.
    np.testing.assert_array_equal(generator.generate(params(seed=21, takes=3))[:2], audio[1:])


def test_estimates_count_windows_prefill_and_takes(tiny_model_dir: object) -> None:
    engine = MusicgenGenerator(str(tiny_model_dir))  # not loaded: musicgen's shape is assumed
    loading = engine.speed.load_seconds
    one_window = engine.estimate_seconds(30) - loading
    two_windows = engine.estimate_seconds(48) - loading
    assert two_windows > one_window * (decode_steps(48, 50, 4) / decode_steps(30, 50, 4))  # and the prefill
    takes = engine.estimate_seconds(10, takes=4) - loading
    assert engine.estimate_seconds(10) - loading < takes < 4 * (engine.estimate_seconds(10) - loading)


def test_same_seed_same_audio_other_seed_other_audio(generator: MusicgenGenerator) -> None:
    first = generator.generate(params(seed=11))
    assert np.array_equal(first, generator.generate(params(seed=11)))
    assert not np.array_equal(first, generator.generate(params(seed=12)))


def test_progress_rises_monotonically_to_one(generator: MusicgenGenerator) -> None:
    seen: list[float] = []
    generator.generate(params(), on_progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    # At least once every NATIVE_STEPS_PER_CALL decode steps, then once EnCodec is done.
    assert len(seen) >= math.ceil(decode_steps(1, 50, 4) / NATIVE_STEPS_PER_CALL) + 1


def test_loads_once_and_concurrent_loads_share_the_model(tiny_model_dir: object) -> None:
    engine = MusicgenGenerator(str(tiny_model_dir))
    assert not engine.loaded
    threads = [threading.Thread(target=engine.load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = engine._loaded
    engine.generate(params())
    assert engine._loaded is loaded is not None


def test_missing_model_raises_a_clean_error(tmp_path: object) -> None:
    engine = MusicgenGenerator(f"{tmp_path}/absent")
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        engine.load()
    assert engine.load_error is not None
    assert not engine.loaded


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_load_is_tried_again_only_after_a_growing_wait(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    clock = FakeClock()
    engine = MusicgenGenerator(str(model_dir), clock=clock)
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        engine.load()
    assert engine.load_retry_in == MusicgenGenerator.LOAD_RETRY_FIRST_S
    shutil.copytree(tiny_model_dir, model_dir)  # the model appears, but the engine waits its turn
    clock.now += MusicgenGenerator.LOAD_RETRY_FIRST_S - 1
    with pytest.raises(ModelUnavailableError, match="next try in 1 s"):
        engine.load()
    assert not engine.loaded
    shutil.rmtree(model_dir)  # a second failure doubles the wait
    clock.now += 1
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        engine.load()
    assert engine.load_retry_in == 2 * MusicgenGenerator.LOAD_RETRY_FIRST_S
    shutil.copytree(tiny_model_dir, model_dir)
    clock.now += 2 * MusicgenGenerator.LOAD_RETRY_FIRST_S
    engine.load()
    assert engine.loaded
    assert engine.load_error is None
    assert engine.load_retry_in is None


def test_generations_asked_from_any_thread_run_on_the_one_engine_thread(
    generator: MusicgenGenerator,
) -> None:
    ran_on: list[int] = []

    def generate() -> None:
        generator.generate(params(), on_progress=lambda _: ran_on.append(threading.get_ident()))

    callers = [threading.Thread(target=generate) for _ in range(2)]
    for caller in callers:
        caller.start()
    generate()
    for caller in callers:
        caller.join()
    assert len(ran_on) >= 3 * math.ceil(decode_steps(1, 50, 4) / NATIVE_STEPS_PER_CALL)
    assert len(set(ran_on)) == 1
    assert ran_on[0] not in {threading.get_ident(), *(caller.ident for caller in callers)}


def test_work_on_the_engine_thread_may_ask_for_the_engine_thread() -> None:
    outer = on_engine_thread(lambda: (threading.get_ident(), on_engine_thread(threading.get_ident)))
    assert outer[0] == outer[1] != threading.get_ident()


def thread_niceness(thread: int) -> int:
    """A thread's niceness, as the kernel reports it (field 19 of its stat line)."""
    stat = Path(f"/proc/self/task/{thread}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_engine_and_the_openmp_workers_it_starts_run_below_the_server() -> None:
    server = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def busy_engine() -> tuple[int, set[int]]:
        torch.ones(1024, 1024) @ torch.ones(1024, 1024)  # starts the engine's OpenMP workers
        return threading.get_native_id(), {int(task.name) for task in Path("/proc/self/task").iterdir()}

    engine, threads = on_engine_thread(busy_engine)
    expected = min(19, server + ENGINE_NICENESS)
    assert thread_niceness(engine) == expected
    assert thread_niceness(threading.get_native_id()) == server
    if torch.get_num_threads() > 1:
        assert sum(thread_niceness(t) == expected for t in threads if t != engine) >= torch.get_num_threads() - 1
