"""The native kernels: every build this CPU runs, against the same arithmetic in torch."""

import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from handler.native import build, packing, runtime
from handler.native.build import GENERIC
from handler.native.packing import FoldedCrossAttention, Int4Linear, Int8Linear, LayerWeights, PackedLinear
from handler.native.runtime import NativeKernels, NativeRun

LAYERS = 2
SHAPES = [(64, 4, 128), (24, 2, 40)]
"""(hidden, heads, ffn): one without padding, one padded to the kernel's blocks."""


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NativeKernels]:
    """Each variant this CPU can run, plus the plain-C one, built into a temporary directory."""
    directory = tmp_path_factory.mktemp("kernels")
    selected = [v for v in (*build.variants(), GENERIC) if runtime.runnable(v)]
    build.build(selected, directory)
    loaded = {v.name: runtime.load(v, directory) for v in selected}
    return {name: k for name, k in loaded.items() if k is not None}


def test_every_runnable_variant_builds_and_loads(builds: dict[str, NativeKernels]) -> None:
    expected = {v.name for v in (*build.variants(), GENERIC) if runtime.runnable(v)}
    assert set(builds) == expected
    assert "generic" in builds


def test_the_library_links_to_torchs_openmp_runtime(builds: dict[str, NativeKernels], tmp_path: Path) -> None:
    runtime = build.openmp_runtime()
    if runtime is None:
        pytest.fail("this torch wheel bundles no OpenMP runtime; the check below would not apply")
    (path,) = build.build([GENERIC], tmp_path)
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    soname = subprocess.run(["readelf", "-d", str(runtime)], capture_output=True, text=True, check=True).stdout
    runtime_name = soname.split("Library soname: [", 1)[1].split("]", 1)[0]
    assert f"Shared library: [{runtime_name}]" in needed
    assert needed.count("libgomp") == 1


def test_build_creates_its_output_directory(tmp_path: Path) -> None:
    (path,) = build.build([GENERIC], tmp_path / "opt" / "kernels")
    assert path.parent == tmp_path / "opt" / "kernels"
    assert path.stat().st_mode & 0o777 == 0o755
    assert runtime.load(GENERIC, path.parent) is not None


def test_a_failed_build_leaves_the_previous_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = build.build([GENERIC], tmp_path)
    before = path.read_bytes()
    monkeypatch.setenv("CC", "false")
    with pytest.raises(subprocess.CalledProcessError):
        build.build([GENERIC], tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_int8_linear_keeps_each_output_channel_within_half_a_step() -> None:
    weight = torch.randn(10, 70) * torch.linspace(0.01, 5.0, 10)[:, None]
    lin = Int8Linear(weight, None)
    q = lin.int8_weight()
    assert q.dtype == torch.int8
    assert q.shape == (10, 70)
    assert int(q.abs().max()) == 127
    step = lin.scale[:10, None]
    assert torch.all((q.float() * step - weight).abs() <= step / 2 + 1e-6)
    assert lin.padded_shape == (12, 128)
    assert lin.weight.numel() == 12 * 128  # zero padded
    assert int(lin.weight.abs().sum()) == int(q.abs().sum(dtype=torch.int64))


def test_int4_linear_keeps_each_weight_within_half_a_step_of_its_group() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 150) * torch.linspace(0.01, 5.0, 150)  # every group of 64 inputs has its own range
    lin = Int4Linear(weight, None)
    q = lin.int4_weight()
    assert q.shape == (6, 150)
    assert int(q.min()) == -8
    assert int(q.max()) <= 7
    steps = lin.group_scales().abs()  # (channels, groups)
    assert steps.shape == (6, 3)
    assert torch.all(steps[:, 0] < steps[:, 2])
    step = steps.repeat_interleave(64, dim=1)[:, :150]
    error = (lin.dequantized_weight() - weight).abs()
    # only values beyond the grid's ends (-8 and 7 steps) are further than half a step away
    assert torch.all((error <= step / 2 + 1e-6) | (q == -8) | (q == 7))
    assert lin.padded_shape == (16, 192)
    assert lin.weight.numel() == 16 * 192 // 2


def test_int4_packing_puts_four_inputs_of_a_channel_in_each_lane() -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 130)
    lin = Int4Linear(weight, None)
    q = lin.int4_weight()
    packed = lin.weight  # (blocks, groups, m, channel, i)
    assert packed.shape == (3, 3, 8, 16, 4)
    for channel, index in [(0, 0), (5, 7), (17, 64 + 12), (39, 129), (33, 101)]:
        block, j = divmod(channel, 16)
        group, within = divmod(index, 64)
        m, rest = divmod(within, 8)
        nibble, i = divmod(rest, 4)
        byte = int(packed[block, group, m, j, i])
        assert (byte >> (4 * nibble) & 0x0F) - 8 == int(q[channel, index])
    assert torch.all(packed[2, :, :, 8:] == 0x88)  # padded channels hold zero weights
    assert torch.all(packed[:, 2, 1:] == 0x88)  # and so do padded inputs (130 of 192)
    assert torch.all(packed[:, 2, 0, :, 2:] & 0x0F == 8)


def test_int4_scales_have_less_error_than_q4_0s() -> None:
    torch.manual_seed(0)
    weight = torch.randn(256, 1024)
    lin = Int4Linear(weight, None)
    groups = weight.view(256, 16, 64)
    q4_0 = (groups.gather(-1, groups.abs().argmax(-1, keepdim=True)) / -8).to(torch.bfloat16).float()
    q4_0_error = ((torch.round(groups / q4_0).clamp(-8, 7) * q4_0 - groups) ** 2).sum(-1)
    error = ((lin.dequantized_weight() - weight).view(256, 16, 64) ** 2).sum(-1)
    assert torch.all(error <= q4_0_error + 1e-6)
    assert float(error.sum()) < 0.93 * float(q4_0_error.sum())


def test_int4_linear_halves_the_bytes_of_int8() -> None:
    weight = torch.randn(1024, 4096)
    int8, int4 = Int8Linear(weight, None), Int4Linear(weight, None)
    int4_bytes = int4.weight.numel() + 2 * int4.group_scale.numel()
    assert int4_bytes / int8.weight.numel() == pytest.approx(0.5 + 2 / 64)


@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(
    ("out_features", "in_features", "rows", "bias"),
    [(48, 16, 2, True), (3072, 1024, 2, False), (8, 100, 1, True), (1024, 4096, 3, True), (64, 128, 19, True)],
)
def test_linear_equals_torch(
    builds: dict[str, NativeKernels],
    out_features: int,
    in_features: int,
    rows: int,
    bias: bool,
    packed: type[PackedLinear],
) -> None:
    torch.manual_seed(out_features + rows)
    lin = packed(torch.randn(out_features, in_features), torch.randn(out_features) if bias else None)
    x = torch.randn(rows, in_features)
    expected = lin(x)
    for name, native in builds.items():
        got = native.linear(lin, x)
        # Integer sums are exact; only the float rescaling (and, in int4, the sum of groups) differs in rounding.
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()), msg=name)


def random_layer(hidden: int, ffn: int, packed: type[PackedLinear] = Int8Linear) -> LayerWeights:
    def norm() -> nn.LayerNorm:
        ln = nn.LayerNorm(hidden)
        nn.init.normal_(ln.weight, 1.0, 0.1)
        nn.init.normal_(ln.bias, 0.0, 0.1)
        return ln

    def linear(out_features: int, in_features: int) -> PackedLinear:
        return packed(torch.randn(out_features, in_features) / in_features**0.5, torch.randn(out_features) * 0.1)

    return LayerWeights(
        norms=(norm(), norm(), norm()),
        qkv=linear(3 * hidden, hidden),
        out=linear(hidden, hidden),
        cross_q=linear(hidden, hidden),
        cross_out=linear(hidden, hidden),
        fc1=linear(ffn, hidden),
        fc2=linear(hidden, ffn),
    )


def without_cross_biases(layer: LayerWeights, packed: type[PackedLinear]) -> LayerWeights:
    """The layer with bias-free cross-attention projections, as MusicGen's (which can be folded)."""
    layer.cross_q = packed(layer.cross_q.dequantized_weight(), None)
    layer.cross_out = packed(layer.cross_out.dequantized_weight(), None)
    return layer


def fold(layer: LayerWeights, keys: torch.Tensor, values: torch.Tensor, heads: int) -> FoldedCrossAttention:
    hidden = int(keys.shape[1] * keys.shape[3])
    shape = (heads, hidden // heads, hidden)
    query, output = layer.cross_q.dequantized_weight(), layer.cross_out.dequantized_weight()
    return FoldedCrossAttention.fold(keys[0], values[0], query.reshape(shape), output.t().reshape(shape))


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(("hidden", "heads", "ffn"), SHAPES)
def test_every_build_computes_the_same_decoder_steps(
    builds: dict[str, NativeKernels], hidden: int, heads: int, ffn: int, packed: type[PackedLinear], folded: bool
) -> None:
    torch.manual_seed(hidden)
    layers = [random_layer(hidden, ffn, packed) for _ in range(LAYERS)]
    if folded:
        layers = [without_cross_biases(layer, packed) for layer in layers]
    final_norm, head = nn.LayerNorm(hidden), Int8Linear(torch.randn(40, hidden), None)
    cross_len, capacity, steps = 5, 12, 12
    cross_k = [torch.randn(1, heads, cross_len, hidden // heads) for _ in layers]
    cross_v = [torch.randn(1, heads, cross_len, hidden // heads) for _ in layers]
    folded_cross = [fold(layer, k, v, heads) for layer, k, v in zip(layers, cross_k, cross_v, strict=True)]
    inputs = torch.randn(steps, 2, hidden)

    def run(native: NativeKernels, fold_cross: bool = folded) -> torch.Tensor:
        # Scratch memory comes back from torch's allocator holding the previous run's values:
        # a result that reads any of it would differ between runs.
        state = NativeRun(
            native,
            layers, final_norm, head, heads=heads, rows=2, cond_rows=1, capacity=capacity,
            cross_k=cross_k, cross_v=cross_v, cross_mask=None, folded_cross=folded_cross if fold_cross else None,
        )  # fmt: skip
        return torch.stack([state.step(inputs[t], t).clone() for t in range(steps)])

    reference = run(builds["generic"])
    assert torch.isfinite(reference).all()
    assert not torch.equal(reference[0], reference[-1])
    scale = float(reference.abs().max())
    for name, native in builds.items():
        got = run(native)
        # Builds sum floats in different orders (vector widths); where that moves a value across
        # an int8 rounding boundary the difference carries on through the layers, a little.
        torch.testing.assert_close(got, reference, rtol=0, atol=0.02 * scale, msg=name)
        assert float((got - reference).abs().mean()) < 0.002 * scale, name
        assert torch.equal(run(native), run(native)), name
    if folded:
        # The same attention as through the projections, up to int8 rounding of other values.
        projected = run(builds["generic"], fold_cross=False)
        torch.testing.assert_close(reference, projected, rtol=0, atol=0.05 * scale)
        assert float((reference - projected).abs().mean()) < 0.005 * scale
        assert not torch.equal(reference, projected)


def test_folded_cross_attention_is_for_one_prompt(builds: dict[str, NativeKernels]) -> None:
    layer = without_cross_biases(random_layer(64, 128), Int8Linear)
    keys, values = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 3, 16)
    with pytest.raises(ValueError, match="one prompt"):
        NativeRun(
            builds["generic"], [layer], nn.LayerNorm(64), Int8Linear(torch.randn(8, 64), None), heads=4,
            rows=4, cond_rows=2, capacity=4, cross_k=[keys], cross_v=[values], cross_mask=None,
            folded_cross=[fold(layer, keys[:1], values[:1], 4)],
        )  # fmt: skip


def test_too_many_rows_are_refused(builds: dict[str, NativeKernels]) -> None:
    layer = random_layer(64, 128)
    with pytest.raises(ValueError, match="rows"):
        NativeRun(
            builds["generic"], [layer], nn.LayerNorm(64), Int8Linear(torch.randn(8, 64), None), heads=4,
            rows=packing.MAX_ROWS + 1, cond_rows=1, capacity=4,
            cross_k=[torch.zeros(1, 4, 2, 16)], cross_v=[torch.zeros(1, 4, 2, 16)], cross_mask=None,
        )  # fmt: skip


@pytest.mark.parametrize("head_dim", [packing.MAX_HEAD_DIM + 4, 6])
def test_heads_the_cache_layout_cannot_hold_are_refused(builds: dict[str, NativeKernels], head_dim: int) -> None:
    layer = random_layer(head_dim, 64)
    with pytest.raises(ValueError, match="multiple of 4 dimensions"):
        NativeRun(
            builds["generic"], [layer], nn.LayerNorm(head_dim), Int8Linear(torch.randn(8, head_dim), None), heads=1,
            rows=2, cond_rows=1, capacity=4,
            cross_k=[torch.zeros(1, 1, 2, head_dim)], cross_v=[torch.zeros(1, 1, 2, head_dim)], cross_mask=None,
        )  # fmt: skip


def reference_draws(
    logits: torch.Tensor, guidance: float, temperature: float, top_k: int, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draws in float64, in vocabulary order, and how far each draw is from a CDF step."""
    scores = logits.double()
    prompts = scores.shape[0] // 2
    scores = scores[prompts:] + (scores[:prompts] - scores[prompts:]) * guidance
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(top_k, -1).indices, True)
    weights = torch.where(kept, ((scores - scores.amax(-1, keepdim=True)) / temperature).exp(), 0.0)
    cdf = weights.cumsum(-1) / weights.sum(-1, keepdim=True)
    target = uniforms.double().unsqueeze(-1)
    picks = (cdf <= target).sum(-1)
    return picks, (cdf - target).abs().amin(-1)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 250), (0.7, 10), (2.0, 1000)])
def test_native_sampling_draws_by_inverse_cdf_in_vocabulary_order(
    builds: dict[str, NativeKernels], temperature: float, top_k: int
) -> None:
    generator = torch.Generator().manual_seed(top_k)
    logits = torch.randn((2, 4, 1000), generator=generator) * 3  # one prompt with guidance, 4 codebooks
    for _ in range(50):
        uniforms = torch.rand((1, 4), generator=generator)
        expected, margin = reference_draws(logits, 3.0, temperature, top_k, uniforms)
        clear = margin > 1e-4  # float32 sums may land either side of a CDF step closer than this
        for native in builds.values():
            picked = native.sample(logits, 3.0, temperature, top_k, uniforms)
            assert torch.equal(picked[clear], expected[clear])


def test_native_sampling_at_temperature_zero_or_top_1_is_the_argmax(builds: dict[str, NativeKernels]) -> None:
    logits = torch.randn((2, 4, 300), generator=torch.Generator().manual_seed(3))
    best = (logits[1:] + (logits[:1] - logits[1:]) * 2.5).argmax(-1)
    unguided = logits[:1].argmax(-1)
    for native in builds.values():
        uniforms = torch.rand((1, 4))
        assert torch.equal(native.sample(logits, 2.5, 0.0, 250, uniforms), best)
        assert torch.equal(native.sample(logits, 2.5, 1.0, 1, uniforms), best)
        assert torch.equal(native.sample(logits[:1], None, 0.0, 250, uniforms), unguided)


def test_folded_cross_attention_equals_attention_through_the_projections() -> None:
    torch.manual_seed(0)
    heads, length, head_dim = 4, 5, 8
    hidden = heads * head_dim
    keys, values = torch.randn(heads, length, head_dim), torch.randn(heads, length, head_dim)
    query_weight, output_weight = torch.randn(heads, head_dim, hidden), torch.randn(heads, head_dim, hidden)
    row = torch.randn(hidden)

    query = torch.einsum("hdn,n->hd", query_weight, row)
    probabilities = torch.softmax(torch.einsum("hld,hd->hl", keys, query) / head_dim**0.5, dim=-1)
    expected = torch.einsum("hdn,hd->n", output_weight, torch.einsum("hl,hld->hd", probabilities, values))

    folded = FoldedCrossAttention.fold(keys, values, query_weight, output_weight)
    scores = (folded.keys.dequantized_weight() @ row).view(heads, length)
    weights = torch.softmax(scores, dim=-1).view(-1) * folded.value_scale
    by_vector = folded.values.transpose(0, 1).reshape(heads * length, -1)  # stored in blocks of 64 dimensions
    assert torch.all(by_vector[:, hidden:] == 0)
    output = weights @ by_vector[:, :hidden].float()
    torch.testing.assert_close(output, expected, rtol=0, atol=0.02 * float(expected.abs().max()))
    assert folded.keys.padded_shape[0] >= heads * length
