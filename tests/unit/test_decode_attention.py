"""A decoding step's attention in fp32 on a CPU under bf16 autocast (tunesmith.models.attention)."""

import pytest
import torch

from tunesmith.generate import _kv
from tunesmith.models.attention import NAME, use_cpu_decode_attention
from tunesmith.models.loading import load_model
from tunesmith.models.precision import cpu_has_bf16, prepare_for_inference

PROMPT = torch.tensor([[5, 17, 42, 9, 100, 7, 250, 33, 12, 61, 8, 99]])


def _prefill_and_step(model, amp: bool):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        first = model(input_ids=PROMPT[:, :-1], use_cache=True)
        step = model(input_ids=PROMPT[:, -1:], use_cache=True, **{_kv(): getattr(first, _kv())})
    return first.logits.float(), step.logits.float()


def test_prefill_is_unchanged_and_a_step_is_nearer_fp32(tiny_model_dir):
    """The switch leaves every multi-token forward as SDPA computes it (bit for bit), changes a decoding step under
    autocast only, and nothing without it."""
    torch.manual_seed(0)
    exact = load_model(tiny_model_dir, device="cpu").eval()
    _, exact_step = _prefill_and_step(exact, amp=False)
    default = load_model(tiny_model_dir, device="cpu").eval()
    switched = load_model(tiny_model_dir, device="cpu").eval()
    assert use_cpu_decode_attention(switched) and switched.config._attn_implementation == NAME
    default_prefill, default_step = _prefill_and_step(default, amp=True)
    switched_prefill, switched_step = _prefill_and_step(switched, amp=True)
    assert torch.equal(default_prefill, switched_prefill)
    assert not torch.equal(default_step, switched_step)  # the step did take the fp32 path
    _, plain_step = _prefill_and_step(switched, amp=False)  # without autocast: SDPA as it is
    assert torch.equal(plain_step, exact_step)


def test_a_step_s_attention_is_nearer_exact_than_bf16_sdpa():
    """One query per row over 300 cached positions, grouped heads, a padding mask: the fp32 step is closer to
    attention computed in float64 than SDPA under bf16 autocast, and close to it in absolute terms."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tunesmith.models.attention import cpu_decode_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    query, key, value = torch.randn(4, 9, 1, 64), torch.randn(4, 3, 300, 64), torch.randn(4, 3, 300, 64)
    mask = torch.ones(4, 1, 1, 300, dtype=torch.bool)
    mask[1, ..., :40] = False
    exact = torch.nn.functional.scaled_dot_product_attention(
        query.double(), key.double().repeat_interleave(3, 1), value.double().repeat_interleave(3, 1), attn_mask=mask)
    exact = exact.transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = cpu_decode_attention(module, query, key, value, mask, scaling=64 ** -0.5)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=64 ** -0.5)
    ours_err, theirs_err = (ours.double() - exact).abs().max(), (theirs.double() - exact).abs().max()
    assert ours_err < 1e-5 < theirs_err


@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 inference runs only where the CPU computes bf16 natively")
def test_inference_models_switch_only_under_bf16(tiny_model_dir):
    assert prepare_for_inference(load_model(tiny_model_dir, device="cpu"), "fp32").config._attn_implementation == "sdpa"
    assert prepare_for_inference(load_model(tiny_model_dir, device="cpu"), "bf16").config._attn_implementation == NAME
