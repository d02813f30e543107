"""Every build this CPU runs, on the same random inputs, against the plain-C reference build and
the same arithmetic in torch: int8 and int4 products, decoder steps, sampling."""

import gc

import pytest
import torch
from torch import nn

from handler.native import packing
from handler.native.packing import Int4Linear, Int8Linear, PackedLinear
from handler.native.runtime import NativeKernels, NativeRun
from tests.support.native_layers import fold, random_layer, self_attention_only_layer, without_cross_biases
from tests.support.native_sampling import sample

LAYERS = 2
SHAPES = [(64, 4, 128), (24, 2, 40)]
"""(hidden, heads, ffn): one without padding, one padded to the kernel's blocks."""


@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(
    ("out_features", "in_features", "rows", "bias"),
    [
        (48, 16, 2, True),
        (3072, 1024, 2, False),
        (8, 100, 1, True),
        (1024, 4096, 3, True),
        (32, 1100, 2, True),
        (64, 128, 19, True),
        (1024, 1024, 8, False),
        (256, 512, 6, True),
    ],
)
def test_linear_equals_torch(
    kernels: NativeKernels, out_features: int, in_features: int, rows: int, bias: bool, packed: type[PackedLinear]
) -> None:
    torch.manual_seed(out_features + rows)
    lin = packed(torch.randn(out_features, in_features), torch.randn(out_features) if bias else None)
    x = torch.randn(rows, in_features)
    expected = lin(x)
    got = kernels.linear(lin, x)
    # Integer sums are exact; only the float rescaling (and, in int4, the sum of groups) differs in rounding.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
def test_a_prepared_product_reruns_what_linear_computes(kernels: NativeKernels, packed: type[PackedLinear]) -> None:
    torch.manual_seed(3)
    lin = packed(torch.randn(72, 200), None)
    x = torch.randn(packing.MAX_ROWS, 200)
    product = kernels.product(lin, x)
    first = product()[:, : lin.out_features].clone()
    assert torch.equal(first, kernels.linear(lin, x))
    assert torch.equal(product()[:, : lin.out_features], first)
    with pytest.raises(ValueError, match="at most"):
        kernels.product(lin, torch.randn(packing.MAX_ROWS + 1, 200))


@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
def test_a_prepared_product_holds_its_weights(kernels: NativeKernels, packed: type[PackedLinear]) -> None:
    # gathered weights live in their own mapping, unmapped when the last reference goes
    torch.manual_seed(4)
    lin = packed(torch.randn(4096, 1024), None)
    packing.gather([lin])
    x = torch.randn(2, 1024)
    expected = kernels.linear(lin, x)
    product = kernels.product(lin, x)
    del lin
    gc.collect()
    assert torch.equal(product()[:, :4096], expected)


class Steps:
    """Random layers, text keys and values and step inputs for one shape, and running them."""

    def __init__(
        self, hidden: int, heads: int, ffn: int, packed: type[PackedLinear], folded: bool, takes: int = 1
    ) -> None:
        """`takes`: conditional rows reading the one prompt, each with its unconditional row."""
        torch.manual_seed(hidden)
        layers = [random_layer(hidden, ffn, packed) for _ in range(LAYERS)]
        if folded:
            layers = [without_cross_biases(layer, packed) for layer in layers]
        self.layers, self.heads, self.folded, self.takes = layers, heads, folded, takes
        self.final_norm, self.head = nn.LayerNorm(hidden), Int8Linear(torch.randn(40, hidden), None)
        cross_len, self.capacity, self.steps = 5, 12, 12
        text = (1, heads, cross_len, hidden // heads)
        self.cross_k = [torch.randn(text).repeat(takes, 1, 1, 1) for _ in layers]
        self.cross_v = [torch.randn(text).repeat(takes, 1, 1, 1) for _ in layers]
        self.folded_cross = [
            fold(layer, k, v, heads) for layer, k, v in zip(layers, self.cross_k, self.cross_v, strict=True)
        ]
        self.inputs = torch.randn(self.steps, 2 * takes, hidden)

    def run(self, native: NativeKernels, fold_cross: bool | None = None) -> torch.Tensor:
        """Every step's logits (steps, rows, head outputs), the text attended through the folded
        projections when `fold_cross` (default: as built)."""
        fold_cross = self.folded if fold_cross is None else fold_cross
        # Scratch memory comes back from torch's allocator holding the previous run's values:
        # a result that reads any of it would differ between runs.
        state = NativeRun(
            native,
            self.layers, self.final_norm, self.head, heads=self.heads, rows=2 * self.takes, cond_rows=self.takes,
            capacity=self.capacity,
            cross_k=self.cross_k, cross_v=self.cross_v, cross_mask=None,
            folded_cross=self.folded_cross if fold_cross else None,
        )  # fmt: skip
        return torch.stack([state.step(self.inputs[t], t).clone() for t in range(self.steps)])


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(("hidden", "heads", "ffn"), SHAPES)
def test_every_build_computes_the_same_decoder_steps(
    kernels: NativeKernels,
    reference: NativeKernels,
    hidden: int,
    heads: int,
    ffn: int,
    packed: type[PackedLinear],
    folded: bool,
) -> None:
    steps = Steps(hidden, heads, ffn, packed, folded)
    expected = steps.run(reference)
    assert torch.isfinite(expected).all()
    assert not torch.equal(expected[0], expected[-1])
    scale = float(expected.abs().max())
    got = steps.run(kernels)
    # Builds sum floats in different orders (vector widths); where that moves a value across
    # an int8 rounding boundary the difference carries on through the layers, a little.
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * scale)
    assert float((got - expected).abs().mean()) < 0.002 * scale
    assert torch.equal(steps.run(kernels), steps.run(kernels))


def test_self_attention_over_many_key_tiles_is_softmax_attention(kernels: NativeKernels) -> None:
    # 150 positions: four whole tiles of 32 keys and a part one, read in one pass with a running
    # softmax. Each query scores its own key highest, so the last tile raises the maximum at every
    # step, and the random scores of the others raise it from tile to tile too.
    hidden, steps, sharpness = 64, 150, 0.5
    torch.manual_seed(7)
    layer = self_attention_only_layer(hidden, sharpness)
    state = NativeRun(
        kernels, [layer], nn.LayerNorm(hidden), Int8Linear(torch.eye(hidden), None), heads=1, rows=2, cond_rows=1,
        capacity=steps, cross_k=[torch.randn(1, 1, 3, hidden)], cross_v=[torch.randn(1, 1, 3, hidden)],
        cross_mask=None,
    )  # fmt: skip
    inputs = torch.randn(steps, 2, hidden)
    got = torch.stack([state.step(inputs[t], t).clone() for t in range(steps)])

    normed = nn.functional.layer_norm(inputs, (hidden,))  # keys and values
    scores = torch.einsum("trd,srd->rts", sharpness * normed, normed) / hidden**0.5
    scores = scores.masked_fill(torch.ones(steps, steps, dtype=torch.bool).triu(1), float("-inf"))
    attended = torch.einsum("rts,srd->trd", scores.softmax(-1), normed)
    expected = nn.functional.layer_norm(inputs + attended, (hidden,))
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)
    assert float((got - expected).abs().mean()) < 0.01


def test_the_per_position_arrays_have_a_tile_to_spare_past_their_end(kernels: NativeKernels) -> None:
    # attention scores whole tiles, reading these arrays up to a tile past the last position
    steps = Steps(24, 2, 40, Int8Linear, folded=False)
    state = NativeRun(
        kernels, steps.layers, steps.final_norm, steps.head, heads=2, rows=2, cond_rows=1, capacity=13,
        cross_k=steps.cross_k, cross_v=steps.cross_v, cross_mask=None,
    )  # fmt: skip
    for array in (state.k_scale, state.v_scale, state.k_sum):
        assert array.shape[-1] == 13
        spare = array.untyped_storage().nbytes() // array.element_size() - array.numel()
        assert spare >= packing.KEY_TILE


@pytest.mark.parametrize("takes", [1, 3])
@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(("hidden", "heads", "ffn"), SHAPES)
def test_folded_cross_attention_steps_equal_steps_through_the_projections(
    kernels: NativeKernels, hidden: int, heads: int, ffn: int, packed: type[PackedLinear], takes: int
) -> None:
    steps = Steps(hidden, heads, ffn, packed, folded=True, takes=takes)
    folded = steps.run(kernels)
    scale = float(folded.abs().max())
    # The same attention as through the projections, up to int8 rounding of other values.
    projected = steps.run(kernels, fold_cross=False)
    torch.testing.assert_close(folded, projected, rtol=0, atol=0.05 * scale)
    assert float((folded - projected).abs().mean()) < 0.005 * scale
    assert not torch.equal(folded, projected)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("packed", [Int8Linear, Int4Linear])
def test_each_take_steps_as_it_would_alone(kernels: NativeKernels, packed: type[PackedLinear], folded: bool) -> None:
    takes = 3
    together = Steps(64, 4, 128, packed, folded, takes)
    batch = together.run(kernels)
    for take in range(takes):
        alone = Steps(64, 4, 128, packed, folded)
        rows = [take, takes + take]  # the take's conditional row and its unconditional one
        alone.inputs = together.inputs[:, rows]
        assert torch.equal(alone.run(kernels), batch[:, rows])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("folded", [False, True])
def test_a_row_that_is_not_finite_makes_only_its_own_outputs_nan(
    kernels: NativeKernels, folded: bool, bad: float
) -> None:
    steps = Steps(64, 4, 128, Int8Linear, folded, takes=2)
    clean = steps.run(kernels)
    steps.inputs[0, 1, 3] = bad  # the second take's conditional row, at the first step
    got = steps.run(kernels)
    assert got[:, 1].isnan().all()  # its cache holds the bad step: every later step reads it
    others = [0, 2, 3]
    assert torch.equal(got[:, others], clean[:, others])


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
    kernels: NativeKernels, temperature: float, top_k: int
) -> None:
    generator = torch.Generator().manual_seed(top_k)
    logits = torch.randn((2, 4, 1000), generator=generator) * 3  # one prompt with guidance, 4 codebooks
    for _ in range(50):
        uniforms = torch.rand((1, 4), generator=generator)
        expected, margin = reference_draws(logits, 3.0, temperature, top_k, uniforms)
        clear = margin > 1e-4  # float32 sums may land either side of a CDF step closer than this
        picked = sample(kernels, logits, 3.0, temperature, top_k, uniforms)
        assert torch.equal(picked[clear], expected[clear])


def test_native_sampling_at_temperature_zero_or_top_1_is_the_argmax(kernels: NativeKernels) -> None:
    logits = torch.randn((2, 4, 300), generator=torch.Generator().manual_seed(3))
    best = (logits[1:] + (logits[:1] - logits[1:]) * 2.5).argmax(-1)
    unguided = logits[:1].argmax(-1)
    uniforms = torch.rand((1, 4))
    assert torch.equal(sample(kernels, logits, 2.5, 0.0, 250, uniforms), best)
    assert torch.equal(sample(kernels, logits, 2.5, 1.0, 1, uniforms), best)
    assert torch.equal(sample(kernels, logits[:1], None, 0.0, 250, uniforms), unguided)
