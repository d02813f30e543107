"""T5 text encoder in plain torch modules, bit-identical to transformers' ``T5EncoderModel`` in eval mode.

Serving imports this instead of ``transformers`` (whose import alone costs seconds of cold start).
``T5TextEncoder.from_transformers`` converts a loaded ``T5EncoderModel`` once, at bake time; the result
is saved in an artifact (``handler.musicgen.module_tree``: JSON and safetensors) and rebuilt in a process
that never imports ``transformers``.

Exactness notes (transformers 5.x, ``modeling_t5.py`` and ``integrations/sdpa_attention.py``):

* T5 does not scale the attention logits (no ``1/sqrt(d_kv)``); the relative position bias of the first
  layer is computed once and shared by every layer;
* padding becomes a boolean mask that is dropped altogether when nothing is padded; otherwise padded keys
  get ``finfo(dtype).min``;
* ``"sdpa"`` (transformers' default) folds bias and mask into one float ``attn_mask`` for
  ``scaled_dot_product_attention``; ``"eager"`` adds bias then mask to ``q @ k^T`` and softmaxes.
  The two differ in the last bits, so the source model's implementation is recorded and reproduced.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

AttnImplementation = Literal["sdpa", "eager"]


def shared_linear(source: nn.Linear) -> nn.Linear:
    """A fresh ``nn.Linear`` sharing ``source``'s weight storage (no copy, no random init)."""
    linear = nn.Linear(source.in_features, source.out_features, bias=source.bias is not None, device="meta")
    linear.weight = nn.Parameter(source.weight.detach(), requires_grad=False)
    if source.bias is not None:
        linear.bias = nn.Parameter(source.bias.detach(), requires_grad=False)
    return linear


def _embedding(source: nn.Embedding) -> nn.Embedding:
    """A fresh ``nn.Embedding`` sharing ``source``'s weight storage."""
    return nn.Embedding(
        source.num_embeddings,
        source.embedding_dim,
        padding_idx=source.padding_idx,
        _weight=source.weight.detach(),
        _freeze=True,
    )


def _clamp_fp16(hidden: Tensor) -> Tensor:
    """Transformers' fp16 overflow guard after every T5 sub-layer (no-op for other dtypes)."""
    if hidden.dtype != torch.float16:
        return hidden
    finfo = torch.finfo(torch.float16)
    clamp_value = torch.where(torch.isinf(hidden).any(), finfo.max - 1000, finfo.max)
    return torch.clamp(hidden, min=-clamp_value, max=clamp_value)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias, variance accumulated in float32."""

    def __init__(self, weight: Tensor, eps: float) -> None:
        """Wrap an existing ``(hidden,)`` weight."""
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.eps = eps

    def forward(self, hidden: Tensor) -> Tensor:
        """Normalise the last dimension."""
        variance = hidden.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden = hidden.to(self.weight.dtype)
        return self.weight * hidden


class NewGELU(nn.Module):
    """The tanh GELU approximation as transformers' ``gelu_new`` computes it (op for op)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class SelfAttention(nn.Module):
    """Pre-norm bidirectional self-attention with residual: ``x + o(attn(norm(x)))``."""

    def __init__(self, layer: Any, eps: float, attn_implementation: AttnImplementation) -> None:
        """Take the weights of a transformers ``T5LayerSelfAttention``."""
        super().__init__()
        attention: Any = layer.SelfAttention
        self.norm = RMSNorm(layer.layer_norm.weight, eps)
        self.q = shared_linear(attention.q)
        self.k = shared_linear(attention.k)
        self.v = shared_linear(attention.v)
        self.o = shared_linear(attention.o)
        self.d_kv = int(attention.key_value_proj_dim)
        self.attn_implementation: AttnImplementation = attn_implementation

    def forward(self, hidden: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
        """``bias``: position bias, with padding folded in for sdpa; ``mask``: eager's additive padding mask or None."""
        normed = self.norm(hidden)
        input_shape = normed.shape[:-1]
        head_shape = (*input_shape, -1, self.d_kv)
        query = self.q(normed).view(head_shape).transpose(1, 2)
        key = self.k(normed).view(head_shape).transpose(1, 2)
        value = self.v(normed).view(head_shape).transpose(1, 2)
        if self.attn_implementation == "sdpa":
            attn = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, scale=1.0)
        else:
            # T5's scaling is 1.0: transformers multiplies by it, which is exact, so it is left out.
            scores = torch.matmul(query, key.transpose(2, 3)) + bias
            if mask is not None:
                scores = scores + mask
            attn = torch.matmul(F.softmax(scores, dim=-1), value)
        attn = attn.transpose(1, 2).contiguous().reshape(*input_shape, -1).contiguous()
        projected: Tensor = self.o(attn)
        return hidden + projected


class FeedForward(nn.Module):
    """Pre-norm feed-forward with residual: ``x + wo(act(wi(norm(x))))``, or the gated ``wi_0``/``wi_1`` form."""

    def __init__(self, layer: Any, eps: float, activation: nn.Module, gated: bool) -> None:
        """Take the weights of a transformers ``T5LayerFF``."""
        super().__init__()
        dense: Any = layer.DenseReluDense
        self.norm = RMSNorm(layer.layer_norm.weight, eps)
        self.gated = gated
        if gated:
            self.wi_0 = shared_linear(dense.wi_0)
            self.wi_1 = shared_linear(dense.wi_1)
        else:
            self.wi = shared_linear(dense.wi)
        self.wo = shared_linear(dense.wo)
        self.act = activation

    def forward(self, hidden: Tensor) -> Tensor:
        """Apply the block."""
        normed = self.norm(hidden)
        inner = self.act(self.wi_0(normed)) * self.wi_1(normed) if self.gated else self.act(self.wi(normed))
        # transformers keeps ``wo`` in fp32 under half precision; a quantized ``wo`` has no tensor weight.
        weight = getattr(self.wo, "weight", None)
        if isinstance(weight, Tensor) and inner.dtype != weight.dtype and weight.dtype != torch.int8:
            inner = inner.to(weight.dtype)
        projected: Tensor = self.wo(inner)
        return hidden + projected


class Block(nn.Module):
    """One T5 encoder block: self-attention then feed-forward."""

    def __init__(self, attention: SelfAttention, feed_forward: FeedForward) -> None:
        """Assemble the two sub-layers."""
        super().__init__()
        self.attention = attention
        self.feed_forward = feed_forward

    def forward(self, hidden: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
        """Apply the block."""
        hidden = _clamp_fp16(self.attention(hidden, bias, mask))
        return _clamp_fp16(self.feed_forward(hidden))


class T5TextEncoder(nn.Module):
    """T5 encoder stack (embedding, blocks, final norm) made of plain torch modules."""

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        relative_attention_bias: nn.Embedding,
        blocks: list[Block],
        final_norm: RMSNorm,
        num_buckets: int,
        max_distance: int,
        attn_implementation: AttnImplementation,
    ) -> None:
        """Assemble converted parts; use ``from_transformers`` to build one."""
        super().__init__()
        self.embed_tokens = embed_tokens
        self.relative_attention_bias = relative_attention_bias
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.attn_implementation: AttnImplementation = attn_implementation

    @classmethod
    def from_transformers(cls, model: Any) -> T5TextEncoder:
        """Convert a transformers ``T5EncoderModel`` (eval semantics); weights are shared, not copied."""
        config: Any = model.config
        if config.feed_forward_proj == "relu":
            activation: type[nn.Module] = nn.ReLU
            gated = False
        elif config.feed_forward_proj == "gated-gelu":
            activation = NewGELU
            gated = True
        else:
            raise NotImplementedError(f"T5 feed_forward_proj {config.feed_forward_proj!r} is not supported")
        impl = getattr(config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise NotImplementedError(f"T5 attention implementation {impl!r} is not supported")
        attn_implementation: AttnImplementation = "sdpa" if impl == "sdpa" else "eager"
        eps = float(config.layer_norm_epsilon)
        stack: Any = model.encoder
        blocks = [
            Block(
                SelfAttention(block.layer[0], eps, attn_implementation),
                FeedForward(block.layer[-1], eps, activation(), gated),
            )
            for block in stack.block
        ]
        return cls(
            embed_tokens=_embedding(stack.embed_tokens),
            relative_attention_bias=_embedding(stack.block[0].layer[0].SelfAttention.relative_attention_bias),
            blocks=blocks,
            final_norm=RMSNorm(stack.final_layer_norm.weight, eps),
            num_buckets=int(config.relative_attention_num_buckets),
            max_distance=int(config.relative_attention_max_distance),
            attn_implementation=attn_implementation,
        )

    def _relative_position_bucket(self, relative_position: Tensor) -> Tensor:
        """Bidirectional T5 buckets: exact near zero, log-spaced up to ``max_distance``, sign in the top half."""
        num_buckets = self.num_buckets // 2
        buckets = (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
        max_exact = num_buckets // 2
        is_small = relative_position < max_exact
        if_large = max_exact + (
            torch.log(relative_position.float() / max_exact)
            / math.log(self.max_distance / max_exact)
            * (num_buckets - max_exact)
        ).to(torch.long)
        if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
        return buckets + torch.where(is_small, relative_position, if_large)

    def position_bias(self, length: int) -> Tensor:
        """Relative position bias of shape (1, heads, length, length)."""
        device = self.relative_attention_bias.weight.device
        context = torch.arange(length, dtype=torch.long, device=device)[:, None]
        memory = torch.arange(length, dtype=torch.long, device=device)[None, :]
        values: Tensor = self.relative_attention_bias(self._relative_position_bucket(memory - context))
        return values.permute([2, 0, 1]).unsqueeze(0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden state (batch, seq, d_model) for token ids and their 0/1 padding mask."""
        hidden = self.embed_tokens(input_ids)
        batch, length = input_ids.shape
        bias = self.position_bias(length)
        keep = attention_mask.to(device=hidden.device, dtype=torch.bool)
        # transformers drops the mask when nothing is padded, which changes the kernel path (and last bits).
        keep_4d = None if bool(keep.all()) else keep[:, None, None, :].expand(batch, 1, length, length)
        min_value = torch.finfo(hidden.dtype).min
        mask: Tensor | None = None
        if self.attn_implementation == "sdpa":
            attn_bias = bias.contiguous() if keep_4d is None else torch.where(keep_4d, bias, min_value).contiguous()
        else:
            attn_bias = bias
            if keep_4d is not None:
                mask = torch.where(keep_4d, torch.zeros((), device=hidden.device, dtype=hidden.dtype), min_value)
        for block in self.blocks:
            hidden = block(hidden, attn_bias, mask)
        out: Tensor = self.final_norm(hidden)
        return out
