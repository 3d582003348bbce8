"""The in-process backend's attention: batched matmuls where they beat SDPA's CPU flash kernel, SDPA elsewhere.
Registered with transformers under `CPU_ATTENTION`; the masks are SDPA's."""

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

CPU_ATTENTION = "flywheel_cpu"
# Queries per block of the bf16 causal prefill attention: 32-128 ran alike, 64 fastest (16 prompts x 200-500 tokens).
CAUSAL_QUERY_BLOCK = 64


def cpu_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA, except where batched matmuls beat its CPU flash kernel: one query token per row under a mask (decoding
    with padding or a preallocated cache), and a causal bf16 prefill without a padding mask (`_prefill`'s chunks).
    Decoding there took SDPA 1.7-2.9 ms per layer and step, a fifth of best-of-n generation time; the matmuls take
    about half of that (torch profiler)."""
    if query.shape[2] == 1 and attention_mask is not None:
        return decoding_attention(query, key, value, attention_mask, scaling), None
    if attention_mask is None and query.shape[2] == key.shape[2] and query.dtype == torch.bfloat16:
        return causal_attention(query, key, value, scaling).transpose(1, 2), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def decoding_attention(query, key, value, attention_mask, scaling):
    """Each key/value head's query heads attend together as two batched matmuls."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    weights = query.view(batch, kv_heads, heads // kv_heads, dim) @ key.transpose(-1, -2) * scaling
    # the mask is [batch, 1, 1, keys]: True (or 0.0) where the row may attend
    weights = (
        weights.masked_fill(~attention_mask, float("-inf"))
        if attention_mask.dtype == torch.bool
        else weights + attention_mask
    )
    attended = weights.softmax(-1, dtype=torch.float32).to(value.dtype) @ value
    return attended.view(batch, heads, 1, dim).transpose(1, 2)


def causal_attention(query, key, value, scaling, block: int = CAUSAL_QUERY_BLOCK):
    """Causal attention in blocks of `block` queries, each against the keys up to its last query only, as batched
    bf16 matmuls. SDPA's CPU flash kernel ran the prefill of caption prompts at ~35 GFLOP/s, a fifth of the prefill
    (torch profiler); this took 19 ms where it took 28 for 16 prompts x 298 tokens (bf16; slower than it in
    float32, where SDPA keeps it)."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.view(batch, kv_heads, heads // kv_heads, length, dim)
    keys, values = key[:, :, None], value[:, :, None]
    attended = torch.empty_like(grouped)
    for start in range(0, length, block):
        end = min(length, start + block)
        weights = grouped[:, :, :, start:end] @ keys[..., :end, :].transpose(-1, -2) * scaling
        future = torch.ones(end - start, end, dtype=torch.bool).triu(start + 1)
        weights = weights.masked_fill(future, float("-inf")).softmax(-1, dtype=torch.float32).to(value.dtype)
        attended[:, :, :, start:end] = weights @ values[..., :end, :]
    return attended.view(batch, heads, length, dim)


AttentionInterface.register(CPU_ATTENTION, cpu_attention)
AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
