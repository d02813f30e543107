"""Speed of our engine against plain transformers `generate`, on the same model in one run.

    python -m benchmarks.speed            # musicgen-small architecture, random weights (cached); int8 and int4
    python -m benchmarks.speed --smoke    # tiny model, seconds, the extras in one precision; what CI runs

Besides the engines' speed: 4 takes of a clip against 1 take, side by side, and a clip past one
30 s window (120 s: its time and peak memory), each precision in its own process.

Each measurement runs in its own process, so load time and peak memory belong to it alone.
Prints a table and writes the figures as JSON.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import psutil

from handler.cpu import cpu_flags
from handler.settings import QUANTIZED, Precision

if TYPE_CHECKING:
    import httpx

PROMPT = "A lofi hip hop beat with smooth jazz piano and rain sounds"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srocks-music" / "benchmark"
ROOT = Path(__file__).resolve().parent.parent


def model_dir(smoke: bool, cache_dir: Path) -> Path:
    """The benchmark model, built once and cached outside the repository, baked as the image bakes it."""
    from benchmarks.random_models import build_musicgen_small, build_tiny_model
    from handler.musicgen.artifact import artifact_dir_name, is_artifact
    from infra.bake_model import bake

    name = "tiny-musicgen-random" if smoke else "musicgen-small-random"
    source = cache_dir / f"{name}-source-{source_version()}"
    baked = cache_dir / f"{name}-baked-{artifact_version()}"
    if not any(source.glob("*.safetensors")):
        source.mkdir(parents=True, exist_ok=True)
        (build_tiny_model if smoke else build_musicgen_small)(source)
    if not all(is_artifact(baked / artifact_dir_name(precision)) for precision in QUANTIZED):
        bake(str(source), baked)
    for stale in (*cache_dir.glob(f"{name}-source-*"), *cache_dir.glob(f"{name}-baked-*"), cache_dir / name):
        if stale.is_dir() and stale not in (source, baked):
            shutil.rmtree(stale)  # ~2-3 GB each
    return baked


def source_dir(baked: Path) -> Path:
    """The plain `save_pretrained` directory the baked benchmark model was made from."""
    return baked.with_name(baked.name.split("-baked-")[0] + f"-source-{source_version()}")


def _digest(*sources: str) -> str:
    import hashlib

    import torch
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for source in sources:
        digest.update((ROOT / source).read_bytes())
    return digest.hexdigest()[:12]


def source_version() -> str:
    """Changes whenever the code that builds the random-weight model does."""
    return _digest("benchmarks/random_models.py")


def artifact_version() -> str:
    """Changes whenever the code or libraries that shape the serving artifact do: a stale bake is never reused."""
    shaping = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "handler" / "musicgen").glob("*.py"))
    return _digest("benchmarks/random_models.py", *shaping, "handler/native/packing.py", "infra/bake_model.py")


NOTABLE_FLAGS = frozenset(
    {
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_int8",
        "asimd",
        "asimddp",
        "i8mm",
        "bf16",
        "sve",
    }
)
"""The instruction sets that decide which kernels and EnCodec dtype this machine gets."""

AS_AVX2_ONLY = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "NATIVE_KERNELS": "avx2",
}
"""A process started with these runs torch (oneDNN, MKL and its own kernels) and the native kernels
on AVX2 alone: how a CPU with AVX-512 measures what an AVX2-only CPU gets (the avx2 build's
decode step, EnCodec in float32)."""


HELD_CLASSES = {
    "http_as_avx2_only": ("avx2", "an AVX2-only CPU"),
    "http_as_avxvnni": ("avxvnni", "an AVX-VNNI CPU without AVX-512"),
}
"""The report's requests served as a CPU without AVX-512 (`torch_held_to_avx2`): the build each is
served with, and the class of CPU it stands for."""
HELD_BUILDS = frozenset(build for build, _ in HELD_CLASSES.values())
"""The builds measured with torch held to AVX2 on a CPU that has AVX-512."""


def torch_held_to_avx2(build: str) -> dict[str, str] | None:
    """The environment that measures `build` as a CPU without AVX-512 runs it (torch held to AVX2,
    oneDNN to AVX-VNNI for the `avxvnni` build), where this CPU has more; None where it has not or
    the build uses AVX-512."""
    if build not in HELD_BUILDS or not beyond_avx2():
        return None
    return AS_AVX2_ONLY | {"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI" if build == "avxvnni" else "AVX2", "NATIVE_KERNELS": build}


def beyond_avx2() -> bool:
    """Whether this CPU has more than AVX2 for torch to use (AVX-512), so AVX2 is measured apart."""
    return "avx512f" in cpu_flags()


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def since_process_start() -> float:
    started: float = psutil.Process().create_time()
    return time.time() - started


def steps_for(seconds: int) -> int:
    return 50 * seconds + 3


Stamp = tuple[float, float]
"""(time, decode steps done)"""


def step_timer(steps_per_unit: float) -> tuple[list[Stamp], Callable[[float], None]]:
    """Stamps for a progress callback that reports `progress` (decode steps done / steps_per_unit)."""
    stamps: list[Stamp] = []
    return stamps, lambda progress: stamps.append((time.perf_counter(), progress * steps_per_unit))


def ms_per_step(stamps: list[Stamp]) -> float:
    # Between the first and last stamp: excludes text encoding and EnCodec decoding.
    (started, first), (ended, last) = stamps[0], stamps[-1]
    return 1000 * (ended - started) / (last - first)


def measure_baseline(directory: Path, seconds: int) -> dict[str, Any]:
    """Plain `model.generate` in fp32, as most MusicGen servers call it."""
    import torch
    from transformers import AutoProcessor, LogitsProcessorList, MusicgenForConditionalGeneration

    processor: Any = AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    model: Any = MusicgenForConditionalGeneration.from_pretrained(directory)
    model.eval()
    ready = since_process_start()
    inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
    stamps, on_step = step_timer(1.0)

    def count(input_ids: Any, scores: Any) -> Any:
        on_step(input_ids.shape[-1])  # one more token each step
        return scores

    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        audio = model.generate(
            **inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=steps_for(seconds),
            logits_processor=LogitsProcessorList([count]),
        )  # fmt: skip
    wall = time.perf_counter() - started
    assert audio.shape[-1] >= seconds * 32000
    return {"ms_per_step": ms_per_step(stamps), "wall_s": wall, "ready_s": ready, "peak_rss_mb": peak_rss_mb()}


def measure_engine(directory: Path, seconds: int, precision: str, long_seconds: int) -> dict[str, Any]:
    """Our engine as the app runs it: `MusicgenGenerator` from `handler.musicgen.generator`."""
    from handler.generation import GenerationParams
    from handler.musicgen.generator import DECODE_SHARE, MusicgenGenerator
    from handler.native import runtime

    native = runtime.best()
    generator = MusicgenGenerator(str(directory), precision)  # type: ignore[arg-type]
    generator.load()
    ready = since_process_start()
    params = GenerationParams(PROMPT, seconds, 3.0, 1.0, seed=0)

    def timed() -> tuple[float, list[Stamp]]:
        # The engine reports the share of decode steps done, scaled to DECODE_SHARE.
        stamps, on_step = step_timer(steps_for(seconds) / DECODE_SHARE)
        started = time.perf_counter()
        audio = generator.generate(params, on_progress=on_step)
        wall = time.perf_counter() - started
        assert audio.shape == (1, seconds * 32000)
        return wall, stamps

    # The first generation in a process also pays one-off costs (first touch of the weights and
    # caches, oneDNN set-up); the second is what a warm instance serves.
    first_wall, first_stamps = timed()
    warm_wall, warm_stamps = timed()
    result = {
        "ms_per_step": ms_per_step(first_stamps[:-1]),
        "wall_s": first_wall,
        "encodec_s": first_stamps[-1][0] - first_stamps[-2][0],
        "warm_ms_per_step": ms_per_step(warm_stamps[:-1]),
        "warm_wall_s": warm_wall,
        "warm_encodec_s": warm_stamps[-1][0] - warm_stamps[-2][0],
        "ready_s": ready,
        "precision": generator.precision,
        "kernels": native.variant.name if native else "not built (torch fallback)",
    }
    generator.generate(GenerationParams(PROMPT, long_seconds, 3.0, 1.0, seed=1))
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_rss_clip_s"] = long_seconds
    if native and precision in QUANTIZED:
        result |= memory_floor(directory, precision, steps_for(seconds))
    return result


TAKES = 4
"""Takes the takes measurement asks for: the most one request may."""


def side_by_side(generator: Any, cases: dict[Any, Any]) -> dict[Any, list[float]]:
    """Wall times of `generator.generate(params)` for each case's params, in one warm process:
    three rounds, alternating (the neighbours' memory traffic moves single runs, at times for a
    minute or more), so the best of each case compares like with like."""
    walls: dict[Any, list[float]] = {case: [] for case in cases}
    for _ in range(3):
        for case, params in cases.items():
            started = time.perf_counter()
            generator.generate(params)
            walls[case].append(time.perf_counter() - started)
    return walls


def measure_takes(directory: Path, seconds: int, precision: str) -> dict[str, Any]:
    """`TAKES` takes of a `seconds` clip against one take (`side_by_side`)."""
    from handler.generation import GenerationParams
    from handler.musicgen.generator import MusicgenGenerator

    generator = MusicgenGenerator(str(directory), precision)  # type: ignore[arg-type]
    generator.generate(GenerationParams(PROMPT, 1, 3.0, 1.0, seed=0))  # loads, and pays the one-off costs
    cases = {takes: GenerationParams(PROMPT, seconds, 3.0, 1.0, seed=0, takes=takes) for takes in (1, TAKES)}
    walls = side_by_side(generator, cases)
    one, several = min(walls[1]), min(walls[TAKES])
    return {"takes": TAKES, "one_take_s": one, "takes_s": several, "ratio": several / one, "walls_s": walls}


LONG_PROMPT = (
    "epic orchestral music with dramatic strings and powerful drums and a lofi hip hop beat with smooth"
    " jazz piano and rain sounds and ambient electronic music with synth pads and gentle beats and"
    " traditional indian classical music with sitar and tabla and rain sounds and dramatic strings"
)
"""A long description: 48 tokens with the benchmark model's tokenizer (each of its training
text's words one token, as T5's vocabulary mostly has them), against `PROMPT`'s 14."""


def measure_prompts(directory: Path, seconds: int, precision: str) -> dict[str, Any]:
    """A `seconds` clip of `LONG_PROMPT` against one of `PROMPT` (`side_by_side`), with each
    prompt's tokens and whether its cross-attention was folded into the text."""
    from handler.generation import GenerationParams
    from handler.musicgen.artifact import artifact_dir_name, load_artifact
    from handler.musicgen.generator import MusicgenGenerator

    prompts = {"short": PROMPT, "long": LONG_PROMPT}
    artifact = load_artifact(Path(directory) / artifact_dir_name(precision))  # type: ignore[arg-type]
    tokens = {name: int(artifact.tokenizer([text])[0].shape[1]) for name, text in prompts.items()}
    steps = steps_for(seconds)
    folded = {name: artifact.model.folds_cross_attention(1, count, steps) for name, count in tokens.items()}
    generator = MusicgenGenerator(str(directory), precision)  # type: ignore[arg-type]
    generator.generate(GenerationParams(PROMPT, 1, 3.0, 1.0, seed=0))  # loads, and pays the one-off costs
    cases = {name: GenerationParams(text, seconds, 3.0, 1.0, seed=0) for name, text in prompts.items()}
    walls = side_by_side(generator, cases)
    short, long = min(walls["short"]), min(walls["long"])
    return {"tokens": tokens, "folded": folded, "short_s": short, "long_s": long, "ratio": long / short,
            "walls_s": walls}  # fmt: skip


def measure_long(directory: Path, seconds: int, precision: str) -> dict[str, Any]:
    """One clip of `seconds`, past one window when longer than 30 s, in a fresh process: its wall
    time (the model loaded first), the process's peak memory, which is the clip's, and the
    bandwidth read before the model loads (its buffer then stays below the clip's peak) and after
    the clip."""
    from handler.generation import GenerationParams
    from handler.musicgen.generator import MusicgenGenerator

    before = streaming_bandwidth()
    generator = MusicgenGenerator(str(directory), precision)  # type: ignore[arg-type]
    generator.load()
    loaded_rss = peak_rss_mb()
    started = time.perf_counter()
    audio = generator.generate(GenerationParams(PROMPT, seconds, 3.0, 1.0, seed=0))
    wall = time.perf_counter() - started
    assert audio.shape == (1, seconds * 32000)
    peak_rss = peak_rss_mb()
    return {"seconds": seconds, "wall_s": wall, "rtf": wall / seconds, "peak_rss_mb": peak_rss,
            "loaded_peak_rss_mb": loaded_rss,
            "stream_gbs_around": [before / 1e9, streaming_bandwidth() / 1e9]}  # fmt: skip


def measure_build(directory: Path, seconds: int, precision: str, build: str) -> dict[str, Any]:
    """One build of the native kernels, forced with NATIVE_KERNELS in this process: ms per decode
    step of a warm clip, beside the memory-bound floor measured just after."""
    os.environ["NATIVE_KERNELS"] = build
    from handler.generation import GenerationParams
    from handler.musicgen.generator import DECODE_SHARE, MusicgenGenerator
    from handler.native import runtime

    native = runtime.best()
    assert native is not None
    assert native.variant.name == build
    generator = MusicgenGenerator(str(directory), precision)  # type: ignore[arg-type]
    generator.generate(GenerationParams(PROMPT, 1, 3.0, 1.0, seed=0))  # loads, and pays the one-off costs
    stamps, on_step = step_timer(steps_for(seconds) / DECODE_SHARE)
    before = streaming_bandwidth()
    generator.generate(GenerationParams(PROMPT, seconds, 3.0, 1.0, seed=0), on_progress=on_step)
    return {"ms_per_step": ms_per_step(stamps[:-1]), "torch_isa": torch_isa()} | memory_floor(
        directory, precision, steps_for(seconds), before
    )


ONE_MODE_SPREAD = 0.2
"""A build's clip counts as measured in one memory mode when the bandwidth read just before and just
after it differ by at most this share of the larger: the development machine's memory switches
between ~35 and ~65 GB/s every few minutes, and a clip across a switch fits neither floor."""

BUILD_ATTEMPTS = 3
"""The most times a build's step is measured while its clip straddles a change of memory speed."""

BUILD_FLOOR_TARGET = 1.5
"""Issue 13's bound on a build's step: this many times the memory-bound floor the run measures."""


def in_one_mode(figures: dict[str, Any]) -> bool:
    """Whether the bandwidth read before and after a build's clip agree (`ONE_MODE_SPREAD`)."""
    before, after = figures["stream_gbs_before"], figures["stream_gbs"]
    return bool(abs(before - after) <= ONE_MODE_SPREAD * max(before, after))


def measure_build_in_one_mode(env: dict[str, str] | None, **options: Any) -> dict[str, Any]:
    """`measure_build` in its own process, measured again (at most `BUILD_ATTEMPTS` times in all)
    while the memory changed speed during the clip: the last measurement, and how many it took."""
    attempts = [run_isolated("build", env, **options)]
    while not in_one_mode(attempts[-1]) and len(attempts) < BUILD_ATTEMPTS:
        attempts.append(run_isolated("build", env, **options))
    return attempts[-1] | {"attempts": len(attempts), "one_mode": in_one_mode(attempts[-1])}


def torch_isa() -> str:
    """The instruction set torch's own CPU kernels use in this process (AVX2 under `AS_AVX2_ONLY`)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


PRODUCT_SHAPES = {"int8": (1024, 1024), "int4": (2048, 1024)}
"""Matrices of musicgen-small's width whose weights (1 MB each) stay in the CPU's caches."""


def measure_products(rows: list[int], rounds: int = 5) -> dict[str, Any]:
    """Each build's arithmetic alone: its int8 and int4 products of a matrix that stays in the
    caches, rerun for ~0.1 s at a time with each number of `rows` (2: one take with guidance; 8:
    four), builds alternating, the median of `rounds`, as GB/s of weights. A build whose figure is
    below a machine's streaming bandwidth cannot reach that machine's memory-bound floor."""
    import torch

    from handler.native import runtime
    from handler.native.build import variants
    from handler.native.packing import Int4Linear, Int8Linear

    builds = {variant.name: runtime.load(variant) for variant in variants() if runtime.runnable(variant)}
    result: dict[str, dict[str, dict[str, float]]] = {}
    for precision, packed in (("int8", Int8Linear), ("int4", Int4Linear)):
        out_features, in_features = PRODUCT_SHAPES[precision]
        lin = packed(torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(0)) * 0.02, None)
        megabytes = lin.weight.numel() * lin.weight.element_size() / 1e6
        for count in rows:
            x = torch.randn(count, in_features, generator=torch.Generator().manual_seed(count))
            products = {name: kernels.product(lin, x) for name, kernels in builds.items() if kernels is not None}
            times: dict[str, list[float]] = {name: [] for name in products}
            for _ in range(rounds):
                for name, product in products.items():
                    product()
                    calls, started = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - started) < 0.1:
                        for _ in range(20):
                            product()
                        calls += 20
                    times[name].append(elapsed / calls)
            for name, seconds in times.items():
                rate = megabytes / 1e3 / statistics.median(seconds)
                result.setdefault(precision, {}).setdefault(name, {})[str(count)] = rate
    return {"gb_per_s": result, "rows": rows}


def measure_encodec(directory: Path, seconds: int, float32_only: bool = False) -> dict[str, Any]:
    """EnCodec's decode of `seconds` of random codes as served (best of three), in each dtype this
    CPU can serve it in: float32 is what a CPU without bf16 gets, so a bf16 machine measures both.
    Also float32 with torch's LSTM and ELUs, as before the native kernels ran them, unless
    `float32_only`."""
    import torch

    from handler.cpu import cpu_has_bf16
    from handler.musicgen.artifact import artifact_dir_name, load_artifact
    from handler.musicgen.generator import on_engine_thread
    from handler.native import runtime

    dtypes = [torch.float32, torch.bfloat16] if cpu_has_bf16() and not float32_only else [torch.float32]
    frames = 50 * seconds
    result: dict[str, Any] = {}
    for dtype, native in [*((dtype, True) for dtype in dtypes), *([] if float32_only else [(torch.float32, False)])]:

        def best_of_three(dtype: torch.dtype = dtype, native: bool = native) -> float:
            # Loaded and prepared on the engine thread, as served: torch's work on the main thread
            # started a second OpenMP pool, whose threads made the engine's barriers sleep (the
            # LSTM's recurrence ran up to 2.4x slower; see `on_engine_thread`).
            model = load_artifact(Path(directory) / artifact_dir_name("int8")).model
            codebooks, size, _ = model.audio_decoder.codebooks.shape
            codes = torch.randint(0, size, (1, 1, codebooks, frames), generator=torch.Generator().manual_seed(0))
            model.audio_decoder.prepare_to_serve(dtype)  # as MusicgenModel.prepare_to_serve, in this dtype
            if native:
                model.run_encodec_natively()
            times = []
            with torch.inference_mode():
                for _ in range(3):
                    started = time.perf_counter()
                    model.decode_audio(codes)
                    times.append(time.perf_counter() - started)
            return min(times)

        name = str(dtype).removeprefix("torch.") + ("" if native else ", torch LSTM and ELU")
        result[name] = on_engine_thread(best_of_three)
    native_build = runtime.best()
    kernels = native_build.variant.name if native_build else "none"
    return {"seconds": seconds, "decode_s": result, "torch_isa": torch_isa(), "kernels": kernels}


def streaming_bandwidth() -> float:
    """Bytes a second a plain streaming read of 256 MB gets now, of memory on 2 MB pages as the
    step's (on 4 KB pages the same read was ~25% slower on a Zen 4 EPYC)."""
    import torch

    from handler.allocator import huge_page_tensor
    from handler.musicgen.generator import on_engine_thread

    def median_read() -> float:
        values = huge_page_tensor(2**26, torch.float32).fill_(1.0)  # far beyond the caches

        def read_once() -> float:
            started = time.perf_counter()
            values.sum()
            return time.perf_counter() - started

        # The median of 20: the neighbours' traffic moves single reads both ways.
        return values.nbytes / statistics.median(read_once() for _ in range(20))

    # All of it on the engine thread, like the steps: the same OpenMP threads read. Filled on the
    # main thread, the buffer's fill started a second OpenMP pool there, and every decode step
    # after it ran 1.4-1.8x slower (its barriers sleeping): the builds' figures, measured just
    # after a read, were 15.2-15.7 ms a step where a clip without the read took 8.0-11.3.
    return on_engine_thread(median_read)


def memory_floor(directory: Path, precision: str, steps: int, bandwidth_before: float | None = None) -> dict[str, Any]:
    """The fastest a memory-bound step could be here: the bytes each step reads (weights and KV
    cache, averaged over the clip) at the `streaming_bandwidth` measured now, with the one
    measured just before the clip where given (the machine's bandwidth can change between)."""
    from handler.musicgen.artifact import artifact_dir_name, load_artifact

    artifact = load_artifact(Path(directory) / artifact_dir_name(precision))  # type: ignore[arg-type]
    engine = artifact.model
    text_length = int(artifact.tokenizer([PROMPT])[0].shape[1])
    folded = text_length if engine.folds_cross_attention(1, text_length, steps) else None
    mean_bytes = sum(engine.step_bytes(position, 2, folded) for position in range(steps)) / steps
    bandwidth = streaming_bandwidth()
    before = {} if bandwidth_before is None else {"stream_gbs_before": bandwidth_before / 1e9}
    return {
        "step_mb": mean_bytes / 1e6,
        "stream_gbs": bandwidth / 1e9,
        "floor_ms_per_step": 1000 * mean_bytes / bandwidth,
        "prompt_tokens": text_length,
        "cross_attention_folded": folded is not None,
    } | before


def measure_quality(directory: Path, seconds: int, precisions: list[str]) -> dict[str, Any]:
    """How far each precision moves next-token distributions from fp32 on one teacher-forced sequence."""
    import torch
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from handler.musicgen.model import MusicgenModel
    from handler.musicgen.pattern import delay_forced

    processor: Any = AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]

    def engine(precision: str) -> MusicgenModel:
        model = MusicgenForConditionalGeneration.from_pretrained(directory)
        return MusicgenModel.from_transformers(model, precision)  # type: ignore[arg-type]

    reference = engine("fp32")
    codes = reference.generate_codes(
        ids, mask, steps=steps_for(seconds), guidance_scale=3.0, temperature=1.0, top_k=250, seed=0
    )
    sequence = torch.full((1, 4, codes.shape[-1] + 4), reference.pad_token_id, dtype=torch.long)
    sequence[:, :, 0] = reference.start_token_id
    for k in range(4):
        sequence[:, k, k + 1 : k + 1 + codes.shape[-1]] = codes[0, :, k]
    valid = ~delay_forced(reference.num_codebooks, sequence.shape[-1])[:, 1:].T
    fp32 = reference.teacher_forced_logits(ids, mask, sequence, guidance_scale=3.0)[:, 0]
    log_p = torch.log_softmax(fp32, -1)
    top_k = min(250, fp32.shape[-1])
    in_reference = torch.zeros_like(fp32, dtype=torch.bool).scatter_(-1, fp32.topk(top_k, -1).indices, True)
    entropy = -(log_p.exp() * log_p).sum(-1)
    per_codebook = range(fp32.shape[1])

    def per_position_mean(values: torch.Tensor, digits: int) -> list[float]:
        return [round(float(values[valid[:, c], c].mean()), digits) for c in per_codebook]

    report: dict[str, Any] = {"fp32_entropy_nats": per_position_mean(entropy, 3), "positions": int(valid.sum())}
    audio = reference.decode_audio(codes)
    for precision in precisions:
        ours = engine(precision)
        ours.prepare_to_serve()
        logits = ours.teacher_forced_logits(ids, mask, sequence, guidance_scale=3.0)[:, 0]
        kl = (log_p.exp() * (log_p - torch.log_softmax(logits, -1))).sum(-1)
        overlap = in_reference.gather(-1, logits.topk(top_k, -1).indices).float().mean(-1)
        noise = (ours.decode_audio(codes) - audio).pow(2).mean() / audio.pow(2).mean()
        report[precision] = {
            "kl_per_codebook": per_position_mean(kl, 5),
            "top250_overlap_per_codebook": per_position_mean(overlap, 4),
            "encodec_dtype": str(ours.audio_decoder.compute_dtype).removeprefix("torch."),
            "audio_snr_db": round(float(-10 * torch.log10(noise)), 1),
        }
    return report


def around(http: dict[str, Any]) -> str:
    """The warm requests' times, each between the bandwidth reads around it."""
    reads = http["stream_gbs_around"]
    times = (f"{seconds:.2f} s" for seconds in http["warm_requests_s"])
    between = (f"{gbs:.0f} GB/s, {step}," for gbs, step in zip(reads, times, strict=False))
    return " ".join(between) + f" {reads[-1]:.0f} GB/s"


def measure_http(directory: Path, seconds: int, precision: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`POST /generate/` against the local server (`env` added to its environment): the number
    users feel, and what served it (kernels, EnCodec's dtype) as `GET /` reports."""
    with local_server(directory, precision, env=env) as (client, server, started):
        up = wait_until_loaded(client)
        served = client.get("/").json()["served_model"]
        body = {"text": PROMPT, "duration": seconds, "seed": 0}
        t0 = time.perf_counter()
        first = client.post("/generate/", json=body)
        cold = time.perf_counter() - t0
        # One request is at the mercy of the neighbours' memory traffic: the best of two warm ones,
        # with the bandwidth read around them (the machine's memory can change speed between).
        warm_requests, bandwidths = [], [streaming_bandwidth()]
        for _ in range(2):
            t0 = time.perf_counter()
            again = client.post("/generate/", json=body)
            warm_requests.append(time.perf_counter() - t0)
            bandwidths.append(streaming_bandwidth())
            assert again.status_code == 200, again.text
        warm = min(warm_requests)
        assert first.status_code == 200, first.text
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
    return {
        "loaded_s": up - started,
        "first_request_s": cold,
        "warm_request_s": warm,
        "warm_requests_s": warm_requests,
        "warm_rtf": warm / seconds,
        "stream_gbs_around": [bandwidth / 1e9 for bandwidth in bandwidths],
        "server_rss_mb": rss,
        "kernels": served["kernels"],
        "audio_decoder_dtype": served["audio_decoder_dtype"],
    }


@contextlib.contextmanager
def local_server(
    directory: Path, precision: str, cache: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple["httpx.Client", subprocess.Popen[bytes], float]]:
    """`make run`'s server on `directory` with its own storage (`env` added to its environment): a
    client, the process, and when it started."""
    import httpx

    with tempfile.TemporaryDirectory() as storage, FreePort() as port:
        environment = {**os.environ, **(env or {})}
        environment |= {"MODEL_ID": str(directory), "STORAGE_DIR": storage, "MODEL_PRECISION": precision}
        if cache is not None:
            environment["ARTIFACT_CACHE_DIR"] = str(cache)
        environment.pop("S3_BUCKET", None)
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "handler.app:app", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
                yield client, server, started
        finally:
            server.terminate()
            server.wait(timeout=30)


def measure_plain_directory(baked: Path, seconds: int, long_seconds: int, precision: str) -> dict[str, Any]:
    """`make run`'s server on a plain `save_pretrained` directory: the first start bakes an
    artifact into an empty cache, a later start loads it. Each start is timed from process start
    to its first clip served (a 1 s clip: ready to serve), then serves a `long_seconds` clip;
    peak memory is the server's high-water mark. The same request is also made of the image's
    baked directory: every start must give the same audio."""
    with tempfile.TemporaryDirectory() as cache:
        source = source_dir(baked)
        first = serve_once(source, precision, Path(cache), long_seconds)
        later = serve_once(source, precision, Path(cache), long_seconds)
        image = serve_once(baked, precision, Path(cache) / "unused", 0)
    return {
        "first_start": first,
        "later_start": later,
        "same_audio_as_image": first.pop("audio") == later.pop("audio") == image.pop("audio"),
        "origins": [first.pop("origin"), later.pop("origin"), image.pop("origin")],
    }


def serve_once(directory: Path, precision: str, cache: Path, long_seconds: int) -> dict[str, Any]:
    """One server start: seconds to the model loaded (the server loads it as it starts) and to the
    first (1 s) clip served, peak memory, and that clip's bytes."""
    with local_server(directory, precision, cache) as (client, server, started):
        loaded = wait_until_loaded(client) - started
        first = client.post("/generate/", json={"text": PROMPT, "duration": 1, "seed": 3})
        ready = time.perf_counter() - started
        assert first.status_code == 200, first.text
        audio = client.get(first.json()["file_url"], follow_redirects=True).content
        ready_peak = high_water_mb(server.pid)
        origin = client.get("/").json()["served_model"]["origin"]
        if long_seconds:
            long = client.post("/generate/", json={"text": PROMPT, "duration": long_seconds, "seed": 0})
            assert long.status_code == 200, long.text
        peak = high_water_mb(server.pid)
    return {
        "loaded_s": loaded,
        "ready_s": ready,
        "peak_rss_mb_ready": ready_peak,
        "peak_rss_mb": peak,
        "audio": audio.hex(),
        "origin": origin,
    }


def high_water_mb(pid: int) -> float:
    """A process's peak resident memory so far (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class FreePort:
    """A free loopback port (context manager)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def __exit__(self, *_: object) -> None:
        return None


def wait_until_up(client: Any) -> float:
    import httpx

    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        try:
            if client.get("/").status_code == 200:
                return time.perf_counter()
        except httpx.TransportError:
            time.sleep(0.1)  # the server process is still importing; there is nothing to await
    raise TimeoutError("server did not come up")


def wait_until_loaded(client: Any) -> float:
    """When `GET /` first reports the model served (the server loads it at startup)."""
    wait_until_up(client)
    deadline = time.perf_counter() + 900
    while time.perf_counter() < deadline:
        health = client.get("/").json()
        if health["served_model"] is not None:
            return time.perf_counter()
        if health.get("model_error"):
            raise RuntimeError(health["model_error"])
        time.sleep(0.05)  # nothing to await from outside the server but its health
    raise TimeoutError("model did not load")


def prepare(smoke: bool, cache_dir: str) -> dict[str, Any]:
    """Build and bake the benchmark model (in its own process: peak memory is inherited by children)."""
    return {"directory": str(model_dir(smoke, Path(cache_dir)))}


MEASUREMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": prepare,
    "baseline": measure_baseline,
    "engine": measure_engine,
    "quality": measure_quality,
    "build": measure_build,
    "encodec": measure_encodec,
    "products": measure_products,
    "takes": measure_takes,
    "prompts": measure_prompts,
    "long": measure_long,
}


def runnable_builds() -> list[str]:
    """The builds of the native kernels this CPU runs, best first."""
    from handler.native import build, runtime

    return [variant.name for variant in build.variants() if runtime.runnable(variant)]


def run_isolated(name: str, env: dict[str, str] | None = None, **options: Any) -> dict[str, Any]:
    """One measurement in a fresh Python process, with `env` added to its environment."""
    command = [sys.executable, "-m", "benchmarks.speed", "--only", name, "--options", json.dumps(options, default=str)]
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def first_and_warm(ours: dict[str, Any], key: str, form: str, per: float = 1.0) -> str:
    """`key` of the engine's first and warm generations, each divided by `per`."""
    return f"{form.format(ours[key] / per)} first, {form.format(ours[f'warm_{key}'] / per)} warm"


def engine_column(base: dict[str, Any], ours: dict[str, Any], http: dict[str, Any], seconds: int) -> list[str]:
    """One engine's cells, in the order of the row names in `table`."""
    speed_up = (base["wall_s"] / ours["wall_s"], base["wall_s"] / ours["warm_wall_s"])
    return [
        f"ours ({ours['precision']}, kernels: {ours['kernels']})",
        first_and_warm(ours, "ms_per_step", "{:.1f}"),
        f"{ours['floor_ms_per_step']:.1f} ({ours['step_mb']:.0f} MB at {ours['stream_gbs']:.1f} GB/s"
        + (f", cross-attention folded for {ours['prompt_tokens']} tokens)" if ours["cross_attention_folded"] else ")")
        if "floor_ms_per_step" in ours
        else "",
        first_and_warm(ours, "wall_s", "{:.2f} s"),
        first_and_warm(ours, "wall_s", "{:.2f}", seconds),
        f"{ours['ready_s']:.2f} s",
        f"{ours['peak_rss_mb']:.0f} MB ({ours['peak_rss_clip_s']} s clip)",
        first_and_warm(ours, "encodec_s", "{:.2f} s"),
        f"{http['warm_request_s']:.2f} s (RTF {http['warm_rtf']:.2f}; {around(http)})",
        f"{http['first_request_s']:.2f} s",
        f"{speed_up[0]:.1f}x first, {speed_up[1]:.1f}x warm",
    ]


def plain_directory_cells(report: dict[str, Any], precision: str) -> list[str]:
    """The "from a plain directory" rows of one engine's column: ready (first clip served) and peak memory."""
    plain = report.get("plain_directory", {}).get(precision)
    if plain is None:
        return ["", ""]
    long_seconds = report["long_seconds"]
    same = "same audio as the image's artifact" if plain["same_audio_as_image"] else "AUDIO DIFFERS from the image's"
    first, later = plain["first_start"], plain["later_start"]
    return [
        f"loaded {first['loaded_s']:.1f} s, first clip {first['ready_s']:.1f} s,"
        f" peak {first['peak_rss_mb_ready']:.0f} MB ({first['peak_rss_mb']:.0f} MB with a {long_seconds} s clip)",
        f"loaded {later['loaded_s']:.1f} s, first clip {later['ready_s']:.1f} s,"
        f" peak {later['peak_rss_mb']:.0f} MB with a {long_seconds} s clip; {same}",
    ]


def table(report: dict[str, Any]) -> str:
    seconds = report["clip_seconds"]
    base = report["baseline"]
    names = [
        "", "ms per decode step", "memory-bound floor, ms per step", f"wall time, {seconds} s clip",
        "real-time factor", "process start to ready",
        "peak resident memory", "EnCodec decode", f"HTTP POST /generate/ {seconds} s, warm (best of 2)",
        "HTTP first request (model loaded at startup)", "speed-up, wall time",
        "from a plain directory: first start (bakes)", "from a plain directory: later start (cached)",
    ]  # fmt: skip
    baseline = [
        "baseline (generate, fp32)", f"{base['ms_per_step']:.1f}", "", f"{base['wall_s']:.2f} s",
        f"{base['wall_s'] / seconds:.2f}", f"{base['ready_s']:.2f} s", f"{base['peak_rss_mb']:.0f} MB", "", "", "", "",
        "", "",
    ]  # fmt: skip
    columns = [names, baseline] + [
        engine_column(base, ours, report["http"][precision], seconds) + plain_directory_cells(report, precision)
        for precision, ours in report["engines"].items()
    ]
    rows = list(zip(*columns, strict=True))
    width = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [" | ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in width))
    for precision, builds in report.get("builds", {}).items():
        lines.append("")
        for name, figures in builds.items():
            limited = f" (torch on {figures['torch_isa']})" if name in HELD_BUILDS else ""
            tries = f"; {figures['attempts']} attempts" if figures["attempts"] > 1 else ""
            straddled = "" if figures["one_mode"] else "; the memory changed speed during it"
            ratio = figures["ms_per_step"] / figures["floor_ms_per_step"]
            lines.append(
                f"{precision}, NATIVE_KERNELS={name}{limited}: {figures['ms_per_step']:.1f} ms per step, warm,"
                f" {ratio:.2f}x the floor (target <= {BUILD_FLOOR_TARGET}x;"
                f" floor {figures['floor_ms_per_step']:.1f} ms: {figures['step_mb']:.0f} MB"
                f" at {figures['stream_gbs']:.1f} GB/s just after;"
                f" {figures['stream_gbs_before']:.1f} GB/s just before{tries}{straddled})"
            )
    for key, (_, cpu_class) in HELD_CLASSES.items():
        for precision, http in report.get(key, {}).items():
            lines.append("")
            lines.append(
                f"{precision}, HTTP POST /generate/ {seconds} s as {cpu_class} ({http['kernels']} kernels, EnCodec in"
                f" {http['audio_decoder_dtype']}, torch on AVX2), warm (best of 2): {http['warm_request_s']:.2f} s"
                f" (RTF {http['warm_rtf']:.2f}; {around(http)})"
            )
    for precision, takes in report.get("takes", {}).items():
        lines.append("")
        lines.append(
            f"{precision}, {takes['takes']} takes of {seconds} s in one batch: {takes['takes_s']:.2f} s against"
            f" {takes['one_take_s']:.2f} s for one take, side by side: {takes['ratio']:.2f}x (target <= 1.6x)"
        )
    for precision, prompts in report.get("prompts", {}).items():
        tokens = prompts["tokens"]
        lines.append(
            f"{precision}, a {tokens['long']}-token prompt against a {tokens['short']}-token one, {seconds} s clip:"
            f" {prompts['long_s']:.2f} s against {prompts['short_s']:.2f} s, side by side:"
            f" {prompts['ratio']:.2f}x (target <= 1.1x)"
        )
    for precision, long in report.get("long", {}).items():
        lines.append(
            f"{precision}, a {long['seconds']} s clip (windows of 30 s): {long['wall_s']:.1f} s"
            f" (RTF {long['rtf']:.2f}; {' -> '.join(f'{gbs:.0f}' for gbs in long['stream_gbs_around'])} GB/s"
            f" around it), peak resident memory {long['peak_rss_mb']:.0f} MB (target <= 2500 MB)"
        )
    if products := report.get("products"):
        lines.append("")
        counts = " and ".join(str(count) for count in products["rows"])
        lines.append(
            f"Products from the caches, GB/s of weights with {counts} rows (a build's ceiling, whatever the memory):"
        )
        for precision, builds in products["gb_per_s"].items():
            cells = ", ".join(
                f"{name} " + " / ".join(f"{rate:.1f}" for rate in by_rows.values()) for name, by_rows in builds.items()
            )
            lines.append(f"  {precision}: {cells}")
    if encodec := report.get("encodec"):
        lines.append("")
        decoded = ", ".join(f"{name} {value:.2f} s" for name, value in encodec["decode_s"].items())
        lines.append(f"EnCodec decode of {encodec['seconds']} s as served (best of 3): {decoded}")
    if at_avx2 := report.get("encodec_at_avx2"):
        decoded = ", ".join(f"{name} {value:.2f} s" for name, value in at_avx2["decode_s"].items())
        lines.append(
            f"EnCodec decode of {at_avx2['seconds']} s, torch on {at_avx2['torch_isa']} alone and"
            f" {at_avx2['kernels']} kernels (an AVX2-only CPU): {decoded}"
        )
    if quality := report.get("quality"):
        lines.append("")
        for precision in report["engines"]:
            lines.append(f"{precision} vs fp32 next-token KL per codebook: {quality[precision]['kl_per_codebook']}")
            overlap = quality[precision]["top250_overlap_per_codebook"]
            lines.append(f"{precision} vs fp32 top-250 overlap per codebook: {overlap}")
            snr, dtype = quality[precision]["audio_snr_db"], quality[precision]["encodec_dtype"]
            lines.append(f"{precision} vs fp32 audio from the same codes: SNR {snr} dB (EnCodec in {dtype})")
        lines.append(f"(fp32 entropy, nats: {quality['fp32_entropy_nats']}; random weights are near uniform)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, short clips, the extras in the first precision only (CI)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="clip length for the timings")
    parser.add_argument("--long-seconds", type=int, default=30, help="clip length for peak memory")
    parser.add_argument(
        "--extended-seconds", type=int, default=120, help="clip length past one window: its time and peak memory"
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["int8", "int4"], choices=get_args(Precision), help="engines to measure"
    )
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the benchmark model is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "speed.json")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        print("RESULT " + json.dumps(MEASUREMENTS[args.only](**json.loads(args.options))))
        return {}
    seconds, long_seconds = (1, 2) if args.smoke else (args.seconds, args.long_seconds)
    extended_seconds = 35 if args.smoke else args.extended_seconds  # the tiny model: two windows
    directory = Path(run_isolated("prepare", smoke=args.smoke, cache_dir=args.cache_dir)["directory"])
    report: dict[str, Any] = {
        "model": "tiny random MusicGen" if args.smoke else "musicgen-small architecture, random weights",
        "clip_seconds": seconds,
        "long_seconds": long_seconds,
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": sorted(cpu_flags() & NOTABLE_FLAGS),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
    }
    report["baseline"] = run_isolated("baseline", directory=directory, seconds=seconds)
    report["engines"], report["http"] = {}, {}
    for precision in args.precisions:
        report["engines"][precision] = run_isolated(
            "engine", directory=directory, seconds=seconds, precision=precision, long_seconds=long_seconds
        )
        report["http"][precision] = measure_http(directory, seconds, precision)
    # The smoke run measures the engines in every precision and the rest (each build, takes, a clip
    # past one window, starts from a plain directory) in the first only: the same code whatever the
    # precision, and each of those processes or servers costs CI seconds of imports.
    extras = args.precisions[:1] if args.smoke else args.precisions
    report["builds"] = {
        precision: {
            variant: measure_build_in_one_mode(
                torch_held_to_avx2(variant),
                directory=directory,
                seconds=seconds,
                precision=precision,
                build=variant,
            )
            for variant in runnable_builds()
        }
        for precision in extras
        if precision in QUANTIZED
    }
    for key, (build, _) in HELD_CLASSES.items():
        if (env := torch_held_to_avx2(build)) and build in runnable_builds():
            report[key] = {precision: measure_http(directory, seconds, precision, env=env) for precision in extras}
    report["takes"] = {
        precision: run_isolated("takes", directory=directory, seconds=seconds, precision=precision)
        for precision in extras
    }
    report["prompts"] = {
        precision: run_isolated("prompts", directory=directory, seconds=seconds, precision=precision)
        for precision in extras
    }
    report["long"] = {
        precision: run_isolated("long", directory=directory, seconds=extended_seconds, precision=precision)
        for precision in extras
    }
    report["products"] = run_isolated("products", rows=[2, 8], rounds=1 if args.smoke else 5)
    report["encodec"] = run_isolated("encodec", directory=directory, seconds=seconds)
    if beyond_avx2():
        report["encodec_at_avx2"] = run_isolated(
            "encodec", AS_AVX2_ONLY, directory=directory, seconds=seconds, float32_only=True
        )
    report["plain_directory"] = {
        precision: measure_plain_directory(directory, seconds, long_seconds, precision)
        for precision in extras
        if precision in QUANTIZED
    }
    compared = [precision for precision in args.precisions if precision != "fp32"]
    if not args.no_quality and compared:
        report["quality"] = run_isolated(
            "quality", directory=directory, seconds=1 if args.smoke else 2, precisions=compared
        )
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
