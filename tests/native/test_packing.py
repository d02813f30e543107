"""Packing weights as the native step reads them: int8 and int4 Linear layers, folded
cross-attention; torch's int8 matrix product made exact."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handler.native.packing import (
    INT4_CHUNK_GROUPS,
    INT4_SCALE_FACTORS,
    KEY_TILE,
    VALUE_GROUP,
    FoldedCrossAttention,
    Int4Linear,
    Int8Linear,
    int8_matmul,
)

ROOT = Path(__file__).resolve().parents[2]

EXTREME_PRODUCTS = textwrap.dedent(
    """
    import torch
    from handler.native.packing import int8_matmul, int8_matmul_saturates
    torch.manual_seed(0)
    # every input and weight at +-127, their signs at random: pairs of products past int16
    quant = (torch.randint(0, 2, (40, 96)) * 254 - 127).to(torch.int8)
    weight = (torch.randint(0, 2, (96, 24)) * 254 - 127).to(torch.int8)
    exact = (quant.long() @ weight.long()).int()
    assert torch.equal(int8_matmul(quant, weight), exact)
    print(int8_matmul_saturates(), torch.equal(torch._int_mm(quant, weight), exact))
    """
)


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


def test_each_int4_group_gets_the_best_of_the_scales_tried_across_chunks() -> None:
    torch.manual_seed(0)
    rows = 2 * INT4_CHUNK_GROUPS // 16 + 16  # the search runs in chunks of groups: three here
    weight = torch.randn(rows, 1024) * torch.rand(rows, 1)
    weight[5] = 0  # all-zero groups: scale 0, every value 0
    lin = Int4Linear(weight, None)
    groups = weight.view(rows, 16, 64)
    q4_0 = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)) / -8
    errors, scales = [], []
    for factor in INT4_SCALE_FACTORS:
        scale = (q4_0 * factor).to(torch.bfloat16).float()
        q = torch.where(scale != 0, torch.round(groups / scale), 0.0).clamp(-8, 7)
        errors.append(((q * scale - groups) ** 2).sum(-1))
        scales.append(scale[..., 0])
    best = torch.stack(errors).argmin(0)  # the first of equal errors, as the search keeps
    expected = torch.stack(scales).gather(0, best[None])[0]
    torch.testing.assert_close(lin.group_scales(), expected, rtol=0, atol=0)
    assert torch.all(lin.group_scales()[5] == 0)
    assert torch.all(lin.int4_weight()[5] == 0)


def test_int4_linear_halves_the_bytes_of_int8() -> None:
    weight = torch.randn(1024, 4096)
    int8, int4 = Int8Linear(weight, None), Int4Linear(weight, None)
    int4_bytes = int4.weight.numel() + 2 * int4.group_scale.numel()
    assert int4_bytes / int8.weight.numel() == pytest.approx(0.5 + 2 / 64)


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
    output = torch.softmax(scores, dim=-1).view(-1) @ folded.dequantized_values()
    torch.testing.assert_close(output, expected, rtol=0, atol=0.02 * float(expected.abs().max()))
    assert folded.keys.padded_shape[0] >= heads * length


def test_folded_values_are_padded_with_zeros_and_summed_per_head() -> None:
    torch.manual_seed(1)
    heads, length, head_dim = 2, 5, 12  # a text of 5 in groups of 4, 24 dimensions in a tile of 32
    hidden = heads * head_dim
    keys, values = torch.randn(heads, length, head_dim), torch.randn(heads, length, head_dim)
    weights = torch.randn(heads, head_dim, hidden)
    folded = FoldedCrossAttention.fold(keys, values, weights, weights)
    assert folded.values.shape == (1, heads, 2, KEY_TILE, VALUE_GROUP)
    by_head = folded.values.permute(1, 2, 4, 0, 3).reshape(heads, 2 * VALUE_GROUP, KEY_TILE)
    assert torch.all(by_head[:, length:] == 0)
    assert torch.all(by_head[:, :, hidden:] == 0)
    assert torch.equal(folded.value_sum, by_head.sum(dim=1, dtype=torch.int32))
    expected = torch.bmm(values, weights).view(heads * length, hidden)
    rounding = expected.abs().amax(dim=1, keepdim=True) / 254  # half a step of each vector's int8
    assert torch.all((folded.dequantized_values() - expected).abs() <= rounding * 1.001)


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["this-cpu", "onednn-held-to-avx2"])
def test_int8_matmul_is_exact_where_torchs_saturates(isa: str | None) -> None:
    # oneDNN reads its instruction-set cap once, at its start: a fresh process for each
    environment = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    if isa is not None:
        environment["ONEDNN_MAX_CPU_ISA"] = isa
    command = [sys.executable, "-c", EXTREME_PRODUCTS]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=True)
    saturates, torch_exact = done.stdout.split()
    assert saturates == str(torch_exact == "False")
    if isa == "AVX2":  # vpmaddubsw's int16 pair sums: torch's own product is off there
        assert (saturates, torch_exact) == ("True", "False")


def test_int8_matmul_is_the_exact_product_in_int32() -> None:
    generator = torch.Generator().manual_seed(1)
    quant = torch.randint(-127, 128, (20, 64), dtype=torch.int8, generator=generator)
    weight = torch.randint(-127, 128, (64, 8), dtype=torch.int8, generator=generator)
    got = int8_matmul(quant, weight)
    assert got.dtype == torch.int32
    assert torch.equal(got, (quant.long() @ weight.long()).int())
