"""The transformers engine over the tiny model."""

import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from handler.generation import GenerationParams
from handler.musicgen.generator import (
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
    assert audio.shape == (2 * generator.sample_rate,)


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
