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


def test_the_switch_changes_only_forwards_under_autocast(tiny_model_dir, monkeypatch):
    """The switch changes a decoding step under autocast (fp32 attention), and a prompt's forward only where the
    kernel is built (its prefill); without autocast everything is SDPA as it is, bit for bit."""
    from tunesmith.models import attention

    torch.manual_seed(0)
    exact = load_model(tiny_model_dir, device="cpu").eval()
    _, exact_step = _prefill_and_step(exact, amp=False)
    default = load_model(tiny_model_dir, device="cpu").eval()
    switched = load_model(tiny_model_dir, device="cpu").eval()
    assert use_cpu_decode_attention(switched) and switched.config._attn_implementation == NAME
    default_prefill, default_step = _prefill_and_step(default, amp=True)
    switched_prefill, switched_step = _prefill_and_step(switched, amp=True)
    assert torch.equal(default_prefill, switched_prefill) == (attention.decode_kernel() is None)
    assert (default_prefill - switched_prefill).abs().max() < 0.1  # bf16 rounding of the logits, no more
    assert not torch.equal(default_step, switched_step)  # the step did take the fp32 path
    _, plain_step = _prefill_and_step(switched, amp=False)  # without autocast: SDPA as it is
    assert torch.equal(plain_step, exact_step)
    monkeypatch.setattr(attention, "kernel_prefill", lambda *a, **k: None)  # a prompt the kernel declines: SDPA
    declined_prefill, _ = _prefill_and_step(switched, amp=True)
    assert torch.equal(default_prefill, declined_prefill)


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


def _kernel_or_skip():
    from tunesmith.models.attention import decode_kernel

    kernel = decode_kernel()
    if kernel is None:
        pytest.skip("tunesmith's decode kernel is not built here (no AVX-512, no compiler, or switched off)")
    return kernel


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 1, 32), (8, 8, 16), (6, 2, 24), (10, 2, 64),
                                                        (8, 2, 128)])  # 1-5 query heads per KV head; head dims on and
# off the vectorised path (a multiple of 16)
@pytest.mark.parametrize("mask", ["left padding", "one row's mask for all", "none"])
@pytest.mark.parametrize("cache", [torch.float32, torch.bfloat16])  # a cache held in bf16 is read as it is
def test_the_decode_kernel_computes_sdpa_s_attention(heads, kv_heads, dim, mask, cache):
    """The compiled step against fp32 SDPA over the same cache: keys and values as `ReservedLayer` holds them (views
    into a longer buffer), rows left-padded by different amounts; a bf16 cache against fp32 SDPA over its values
    widened to fp32 (exactly: the kernel widens each as it loads it)."""
    from tunesmith.models.attention import kernel_step

    kernel = _kernel_or_skip()
    torch.manual_seed(heads * dim)
    rows, length = 5, 41
    query = torch.randn(rows, heads, 1, dim)
    keys, values = (torch.randn(rows, kv_heads, length + 9, dim).to(cache)[..., :length, :] for _ in range(2))
    if mask == "none":  # and a value cache whose head dimension is not the contiguous one
        values = torch.randn(rows, kv_heads, dim, length).to(cache).transpose(-1, -2)
    keys, values = (t.float() if cache is torch.float32 else t for t in (keys, values))
    keep = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    for r in range(rows):
        keep[r, ..., : 7 * r] = False
    given = {"left padding": keep, "one row's mask for all": keep[3:4], "none": None}[mask]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, keys.float().repeat_interleave(heads // kv_heads, 1), values.float().repeat_interleave(heads // kv_heads, 1),
        attn_mask=given, scale=0.2).transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = kernel_step(kernel, None, query, keys, values, given, scaling=0.2)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    assert (ours - expected).abs().max() < 1e-5


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 1, 32), (8, 8, 16), (6, 2, 24), (10, 2, 64),
                                                        (8, 2, 128)])
@pytest.mark.parametrize("mask", ["left padding", "one row's mask for all", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the values as v_proj gives them under autocast
@pytest.mark.parametrize("past", [0, 23])  # a prompt; queries after a cache (eval's references)
def test_the_prefill_kernel_computes_sdpa_s_attention_on_bf16_inputs(heads, kv_heads, dim, mask, dtype, past):
    """A prompt's attention (causal, rows left-padded by different amounts, padding rows attending everything as
    transformers' SDPA mask makes them) against fp32 SDPA over the same inputs rounded to bf16, which is what
    autocast hands SDPA; queries as transformers passes them (a transposed view)."""
    from types import SimpleNamespace

    from tunesmith.models.attention import kernel_prefill

    kernel = _kernel_or_skip()
    torch.manual_seed(heads * dim)
    rows, length = 4, 45  # not a multiple of the kernel's 16 positions or 32 keys
    positions = past + length
    query = torch.randn(rows, length, heads, dim).transpose(1, 2)
    keys, values = torch.randn(rows, kv_heads, positions, dim), torch.randn(rows, kv_heads, positions, dim).to(dtype)
    keep = torch.ones(rows, 1, length, positions, dtype=torch.bool).tril(past)
    for r in range(rows):
        keep[r, ..., : 11 * r] = False
    keep |= (~keep).all(-1, keepdim=True)  # a padding query attends every position (transformers' SDPA mask)
    given = {"left padding": keep, "one row's mask for all": keep[2:3], "none": None}[mask]
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(t.to(torch.bfloat16).float() for t in (query, keys.repeat_interleave(heads // kv_heads, 1),
                                                  values.repeat_interleave(heads // kv_heads, 1))),
        attn_mask=torch.ones(length, positions, dtype=torch.bool).tril(past) if given is None else given,
        scale=0.2).transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = kernel_prefill(kernel, SimpleNamespace(is_causal=True), query, keys, values, given, scaling=0.2)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    assert (ours - expected).abs().max() < 1e-5


def test_prompts_the_prefill_kernel_does_not_compute_are_left_to_sdpa():
    """Additive masks, soft-capping, a model that is not causal: declined."""
    from types import SimpleNamespace

    from tunesmith.models.attention import kernel_prefill

    kernel = _kernel_or_skip()
    module = SimpleNamespace(is_causal=True)
    query, key, value = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    assert kernel_prefill(kernel, module, query, key, value, torch.zeros(1, 1, 5, 5)) is None
    assert kernel_prefill(kernel, module, query, key, value, None, softcap=30.0) is None
    assert kernel_prefill(kernel, SimpleNamespace(is_causal=False), query, key, value, None) is None
    assert kernel_prefill(kernel, module, query, key, value, None, is_causal=False) is None
    assert kernel_prefill(kernel, module, query, key, value, None) is not None


def test_steps_the_kernel_does_not_compute_are_left_to_sdpa():
    """An additive mask, soft-capping or a position bias: `kernel_step` declines, `cpu_decode_attention` answers
    with SDPA as before."""
    from types import SimpleNamespace

    from tunesmith.models.attention import cpu_decode_attention, kernel_step

    kernel = _kernel_or_skip()
    query, key, value = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    additive = torch.zeros(2, 1, 1, 7)
    assert kernel_step(kernel, None, query, key, value, additive) is None
    assert kernel_step(kernel, None, query, key, value, None, softcap=30.0) is None
    assert kernel_step(kernel, None, query, key, value, None, position_bias=torch.zeros(1, 4, 1, 7)) is None
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cpu_decode_attention(module, query, key, value, additive, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=additive, scale=0.25)
    assert (out - expected.transpose(1, 2)).abs().max() < 1e-5


def test_the_decode_kernel_can_be_switched_off(monkeypatch):
    from tunesmith.models import attention

    monkeypatch.setenv(attention.KERNEL_SWITCH, "0")
    attention.decode_kernel.cache_clear()
    try:
        assert attention.decode_kernel() is None
    finally:
        attention.decode_kernel.cache_clear()


def test_cached_answers_know_which_attention_decoded_them(tiny_model_dir, monkeypatch):
    """The base model's forgetting-panel scores are keyed by the decoding attention's implementation too: fp32 sums
    in another order can move a near-tie, so answers decoded with SDPA are not reused for the kernel, or back."""
    from tunesmith.eval.forgetting import base_scores_path, load_general_tasks
    from tunesmith.models import attention

    _kernel_or_skip()
    if not cpu_has_bf16():
        pytest.skip("the kernel decodes only under bf16, which runs only where the CPU computes bf16 natively")
    model, tasks = str(tiny_model_dir), load_general_tasks(n=2)
    assert attention.decode_implementation("fp32", torch.device("cpu")) == "sdpa"
    with_kernel = base_scores_path("c", model, tasks, 8, 4, "bf16")
    monkeypatch.setenv(attention.KERNEL_SWITCH, "0")
    attention.decode_kernel.cache_clear()
    try:
        assert attention.decode_implementation("bf16", torch.device("cpu")) == "sdpa"
        assert base_scores_path("c", model, tasks, 8, 4, "bf16") != with_kernel
    finally:
        attention.decode_kernel.cache_clear()
