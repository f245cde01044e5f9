"""The one generation path with per-row settings: stop strings, limits, streaming, seeds, adapters, constraints."""

import pytest
import torch

from tunesmith.generate import BASE_ADAPTER, RowRequest, encode_chat, generate_chat, generate_rows

QUESTIONS = ["What are the papers?", "Did Alan Turing publish in ICML? " * 3, "fox", "the quick brown"]


def _rows(tokenizer, **kw):
    return [RowRequest(encode_chat(tokenizer, [{"role": "user", "content": q}]), **kw) for q in QUESTIONS]


def _two_adapter_model(tiny_model_dir, two_adapters):
    """The tiny model with the LoRA adapters "alpha" and "beta" loaded side by side (peft), for per-row adapters."""
    from peft import PeftModel

    from tunesmith.models.loading import load_model

    model = PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), two_adapters["alpha"],
                                      adapter_name="alpha")
    model.load_adapter(two_adapters["beta"], adapter_name="beta")
    return model.eval()


def _assert_cache_of_one_forward(cache, whole, mask):
    """`cache` holds `whole`'s keys and values at every real position of `mask` (the prompt but its last token), and
    zeros where the mask is 0."""
    real = mask[:, None, :-1, None].bool()
    for ours, theirs in zip(cache.layers, whole.layers):
        for a, b in ((ours.keys, theirs.keys), (ours.values, theirs.values)):
            assert a.shape == b.shape
            torch.testing.assert_close(a.masked_fill(~real, 0), b.masked_fill(~real, 0), atol=1e-5, rtol=1e-4)
            assert not a.masked_fill(real, 0).any()


def test_streamed_pieces_add_up_to_the_text_and_counts_are_reported(tiny_model, tiny_tokenizer):
    pieces: dict[int, list[str]] = {i: [] for i in range(len(QUESTIONS))}
    rows = _rows(tiny_tokenizer, max_new_tokens=10)
    for i, r in enumerate(rows):
        r.on_text = pieces[i].append
    results = generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")
    for i, res in enumerate(results):
        assert "".join(pieces[i]) == res.text
        assert res.prompt_tokens == len(rows[i].prompt_ids)
        assert res.completion_tokens <= 10
        assert res.finish_reason in ("stop", "length")
        assert res.finish_reason == "stop" or res.completion_tokens == 10


def test_stop_string_cuts_the_text_and_is_never_streamed(tiny_model, tiny_tokenizer):
    free = generate_rows(tiny_model, tiny_tokenizer, _rows(tiny_tokenizer, max_new_tokens=16), precision="fp32")
    i, text = max(enumerate(r.text for r in free), key=lambda kv: len(kv[1]))
    assert len(text) >= 6
    stop = text[3:6]  # a piece of what the model says unprompted
    streamed: list[str] = []
    row = _rows(tiny_tokenizer, max_new_tokens=16, stop=[stop])[i]
    row.on_text = streamed.append
    res = generate_rows(tiny_model, tiny_tokenizer, [row], precision="fp32")[0]
    assert res.text == text[: text.find(stop)]
    assert res.finish_reason == "stop"
    assert "".join(streamed) == res.text and stop not in "".join(streamed)


def test_per_row_token_limits_in_one_batch(tiny_model, tiny_tokenizer):
    rows = _rows(tiny_tokenizer, max_new_tokens=12)
    rows[0].max_new_tokens, rows[2].max_new_tokens = 2, 5
    results = generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")
    alone = [generate_rows(tiny_model, tiny_tokenizer, [r], precision="fp32")[0] for r in rows]
    assert [r.text for r in results] == [r.text for r in alone]
    assert results[0].completion_tokens <= 2 and results[2].completion_tokens <= 5


def test_sampling_depends_on_the_row_seed_not_on_the_batch(tiny_model, tiny_tokenizer):
    rows = _rows(tiny_tokenizer, max_new_tokens=12, temperature=1.0, top_p=0.9)
    for i, r in enumerate(rows):
        r.seed = 100 + i
    batched = [r.text for r in generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")]
    alone = [generate_rows(tiny_model, tiny_tokenizer, [r], precision="fp32")[0].text for r in rows]
    assert batched == alone
    rows[0].seed = 7
    other = [generate_rows(tiny_model, tiny_tokenizer, [rows[0]], precision="fp32")[0].text for _ in range(2)]
    assert other[0] == other[1]  # same seed, same sample
    greedy = generate_chat(tiny_model, tiny_tokenizer, [[{"role": "user", "content": QUESTIONS[0]}]],
                           max_new_tokens=12, precision="fp32", show_progress=False)
    sampled = {generate_chat(tiny_model, tiny_tokenizer, [[{"role": "user", "content": QUESTIONS[0]}]],
                             max_new_tokens=12, temperature=1.5, seed=s, precision="fp32", show_progress=False)[0]
               for s in range(4)}
    assert sampled - set(greedy)  # sampling really samples


def test_cancelled_row_ends_early_and_others_continue(tiny_model, tiny_tokenizer):
    rows = _rows(tiny_tokenizer, max_new_tokens=12)
    rows[1].cancelled = lambda: True
    results = generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")
    assert results[1].finish_reason == "cancelled" and results[1].completion_tokens == 1
    alone = generate_rows(tiny_model, tiny_tokenizer, [rows[0]], precision="fp32")[0]
    assert results[0].text == alone.text


class OnlyTokens:
    """A constraint allowing a fixed set of tokens for `n` steps, then nothing (the turn must end)."""

    def __init__(self, allowed: list[int], n: int):
        self.allowed, self.n, self.seen = allowed, n, []

    def mask(self, scores):
        keep = scores.clone()
        scores.fill_(-float("inf"))
        if len(self.seen) < self.n:
            scores[self.allowed] = keep[self.allowed]

    def advance(self, token):
        self.seen.append(token)


def test_constraint_restricts_tokens_and_ends_the_turn(tiny_model, tiny_tokenizer):
    allowed = tiny_tokenizer("fox dog", add_special_tokens=False)["input_ids"]
    rows = _rows(tiny_tokenizer, max_new_tokens=12)
    rows[0].constraint = OnlyTokens(allowed, 3)
    results = generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")
    assert set(rows[0].constraint.seen) <= set(allowed) and len(rows[0].constraint.seen) == 3
    assert results[0].finish_reason == "stop" and results[0].completion_tokens == 3
    free = generate_rows(tiny_model, tiny_tokenizer, _rows(tiny_tokenizer, max_new_tokens=12)[1:], precision="fp32")
    assert [r.text for r in results[1:]] == [r.text for r in free]  # other rows untouched


@pytest.fixture()
def two_adapters(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.loading import load_model

    paths = {}
    for i, name in enumerate(["alpha", "beta"]):
        torch.manual_seed(10 + i)
        model = get_peft_model(load_model(tiny_model_dir, device="cpu"),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        paths[name] = tmp_path / name
        model.save_pretrained(paths[name])
    return paths


def test_mixed_adapters_in_one_batch_equal_each_adapter_alone(tiny_model_dir, tiny_tokenizer, two_adapters):
    from peft import PeftModel

    from tunesmith.models.loading import load_model

    model = _two_adapter_model(tiny_model_dir, two_adapters)
    names = ["alpha", BASE_ADAPTER, "beta", "alpha"]
    rows = _rows(tiny_tokenizer, max_new_tokens=10)
    for r, name in zip(rows, names):
        r.adapter = name
    mixed = [r.text for r in generate_rows(model, tiny_tokenizer, rows, precision="fp32")]
    for r, name, text in zip(rows, names, mixed):
        reference = load_model(tiny_model_dir, device="cpu")
        if name != BASE_ADAPTER:
            reference = PeftModel.from_pretrained(reference, two_adapters[name]).merge_and_unload()
        r.adapter = None
        assert generate_rows(reference.eval(), tiny_tokenizer, [r], precision="fp32")[0].text == text
    assert len(set(mixed)) > 1  # the adapters really change the answers


@pytest.mark.parametrize("method", ["none", "lora"])
def test_bf16_inference_weights_give_autocast_s_numbers_bit_for_bit(method, tiny_model_dir, tiny_tokenizer):
    """Linear weights stored in bf16 once (the tied LM head given its own copy) == fp32 weights re-cast by autocast
    for every token: the same logits, bit for bit, the same greedy answers; embeddings and norms stay fp32."""
    from pydantic import TypeAdapter

    from tunesmith.config import MethodConfig
    from tunesmith.methods.base import Task, get_method
    from tunesmith.models.loading import load_model
    from tunesmith.models.precision import cpu_has_bf16, store_frozen_linear_weights_in

    def build():
        torch.manual_seed(0)
        model = load_model(tiny_model_dir, device="cpu")
        if method == "lora":
            cfg = TypeAdapter(MethodConfig).validate_python({"name": "lora"})
            model = get_method("lora").apply(model, cfg, Task(model_path=str(tiny_model_dir)))
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 0.1)
        return model.eval().requires_grad_(False)

    reference, prepared = build(), build()
    assert store_frozen_linear_weights_in(prepared, torch.bfloat16, untie_output=True) > 0
    head, embeddings = prepared.get_output_embeddings(), prepared.get_input_embeddings()
    assert head.weight.dtype == torch.bfloat16 and embeddings.weight.dtype == torch.float32
    ids = torch.tensor([[5, 17, 42, 9, 100, 7, 250, 33]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(reference(input_ids=ids).logits, prepared(input_ids=ids).logits)
    if not cpu_has_bf16():
        pytest.skip("the generation half needs a CPU with native bf16 (generate_rows refuses emulated bf16)")
    answers = [[r.text for r in generate_rows(m, tiny_tokenizer, _rows(tiny_tokenizer, max_new_tokens=12),
                                              precision="bf16")] for m in (reference, prepared)]
    assert answers[0] == answers[1]


def test_rows_leaving_the_batch_change_no_answer(tiny_model, tiny_tokenizer):
    """Finished rows leave the batch every DROP_FINISHED_EVERY tokens and the rest continue from the cropped KV
    cache: every row's answer, finish reason and token count are those it gets alone."""
    from tunesmith.generate import DROP_FINISHED_EVERY

    limits = [3, 2 * DROP_FINISHED_EVERY + 5, DROP_FINISHED_EVERY, DROP_FINISHED_EVERY + 1]
    def rows():
        return [RowRequest(r.prompt_ids, max_new_tokens=n) for r, n in zip(_rows(tiny_tokenizer), limits)]

    together = generate_rows(tiny_model, tiny_tokenizer, rows(), batch_size=4, precision="fp32")
    alone = [generate_rows(tiny_model, tiny_tokenizer, [r], batch_size=1, precision="fp32")[0] for r in rows()]
    assert together == alone
    assert [r.completion_tokens for r in together] == limits  # the tiny model never says end-of-turn here


LONG = ["Name three papers by Alan Turing and the venues they appeared in, " * 4, "fox", "the quick brown fox " * 6,
        "Did Alan Turing publish in ICML? " * 3, "What are the papers?"]


def _long_rows(tokenizer, n=14):
    return [RowRequest(encode_chat(tokenizer, [{"role": "user", "content": q}]), max_new_tokens=n) for q in LONG]


@pytest.mark.parametrize("budget", [1, 60, 150])  # one row per forward; groups of several rows; groups of mixed widths
def test_prefill_in_row_groups_gives_the_cache_and_answers_of_one_forward(budget, tiny_model, tiny_tokenizer,
                                                                           monkeypatch):
    """The prompt cache computed a few rows at a time and stitched into the left-padded batch holds, at every real
    position, the keys and values of one forward over the whole batch; zeros where the mask is 0; and greedy answers
    are those of transformers' own prefill."""
    import tunesmith.generate as generate

    ids = [r.prompt_ids for r in sorted(_long_rows(tiny_tokenizer), key=lambda r: -len(r.prompt_ids))]
    width = len(ids[0])
    input_ids = torch.full((len(ids), width), tiny_tokenizer.pad_token_id)
    attention = torch.zeros_like(input_ids)
    for row, prompt in enumerate(ids):
        input_ids[row, width - len(prompt):], attention[row, width - len(prompt):] = torch.tensor(prompt), 1
    monkeypatch.setattr(generate, "PREFILL_TOKENS", budget)
    with torch.inference_mode():
        cache, _ = generate._prefill(tiny_model, input_ids, attention, {})
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
        whole = getattr(tiny_model(input_ids=input_ids[:, :-1], attention_mask=attention[:, :-1],
                                   position_ids=positions[:, :-1], use_cache=True), generate._kv())
    _assert_cache_of_one_forward(cache, whole, attention)
    grouped = generate_rows(tiny_model, tiny_tokenizer, _long_rows(tiny_tokenizer), batch_size=5, precision="fp32")
    monkeypatch.setattr(generate, "PREFILL_TOKENS", 10**9)
    one_forward = generate_rows(tiny_model, tiny_tokenizer, _long_rows(tiny_tokenizer), batch_size=5, precision="fp32")
    assert grouped == one_forward


def test_a_batch_takes_the_rows_whose_kv_cache_fits(tiny_model, tiny_tokenizer):
    """`rows_that_fit`: rows × (the longest prompt + the most new tokens + CACHE_ROOM) × the model's KV bytes per
    position within the cap, at most `rows`, never none; no cap, or a config that does not say, takes `rows`."""
    from types import SimpleNamespace

    from tunesmith.generate import CACHE_ROOM, kv_bytes_per_position, rows_that_fit

    cfg = tiny_model.config
    per_position = kv_bytes_per_position(tiny_model)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert per_position == cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4
    rows = sorted(_long_rows(tiny_tokenizer, n=20), key=lambda r: -len(r.prompt_ids))
    row_bytes = (len(rows[0].prompt_ids) + 20 + CACHE_ROOM) * per_position
    assert rows_that_fit(tiny_model, rows, 5, 3 * row_bytes) == 3
    assert rows_that_fit(tiny_model, rows, 5, 3 * row_bytes - 1) == 2
    assert rows_that_fit(tiny_model, rows, 2, 100 * row_bytes) == 2
    assert rows_that_fit(tiny_model, rows, 5, 1) == 1  # a row wider than the cap still runs, alone
    assert rows_that_fit(tiny_model, rows, 5, None) == 5
    assert rows_that_fit(SimpleNamespace(config=SimpleNamespace()), rows, 5, 1) == 5


def test_rows_held_back_by_the_cache_cap_get_the_answers_of_one_batch(tiny_model, tiny_tokenizer, monkeypatch):
    """A cap that splits the list into smaller batches changes no answer, and the batches are as the cap says (the
    longest prompts first)."""
    import tunesmith.generate as generate
    from tunesmith.generate import CACHE_ROOM, kv_bytes_per_position

    sizes = []
    real = generate.rows_that_fit
    monkeypatch.setattr(generate, "rows_that_fit", lambda *a: sizes.append(real(*a)) or sizes[-1])
    rows = _long_rows(tiny_tokenizer)
    widest = max(len(r.prompt_ids) for r in rows)
    cap = 2 * (widest + 14 + CACHE_ROOM) * kv_bytes_per_position(tiny_model)
    capped = generate_rows(tiny_model, tiny_tokenizer, _long_rows(tiny_tokenizer), batch_size=5, precision="fp32",
                           max_cache_bytes=cap)
    assert sizes[0] == 2 and sum(sizes) == len(rows) and len(sizes) >= 3
    sizes.clear()
    assert capped == generate_rows(tiny_model, tiny_tokenizer, _long_rows(tiny_tokenizer), batch_size=5,
                                   precision="fp32", max_cache_bytes=None)
    assert sizes == [5]


def test_prefill_in_row_groups_keeps_each_row_s_adapter(tiny_model_dir, tiny_tokenizer, two_adapters, monkeypatch):
    import tunesmith.generate as generate

    model = _two_adapter_model(tiny_model_dir, two_adapters)

    def rows():
        out = _long_rows(tiny_tokenizer, n=10)
        for r, name in zip(out, ["alpha", BASE_ADAPTER, "beta", "alpha", "beta"]):
            r.adapter = name
        return out

    monkeypatch.setattr(generate, "PREFILL_TOKENS", 60)
    grouped = generate_rows(model, tiny_tokenizer, rows(), batch_size=5, precision="fp32")
    monkeypatch.setattr(generate, "PREFILL_TOKENS", 10**9)
    assert grouped == generate_rows(model, tiny_tokenizer, rows(), batch_size=5, precision="fp32")


def test_reserved_cache_layer_holds_what_a_dynamic_layer_holds(monkeypatch):
    """Updates written in place into a reserved buffer (reserving again when it is full), cropping, rows leaving
    the batch and reordering: at every step the layer returns and holds exactly DynamicLayer's keys and values."""
    from transformers.cache_utils import DynamicLayer

    import tunesmith.generate as generate

    monkeypatch.setattr(generate, "CACHE_ROOM", 3)
    ours, theirs = generate._reserved_layer_class()(), DynamicLayer()
    torch.manual_seed(0)

    def same():
        # bf16 values (a Linear's output under autocast) are held at the keys' fp32 (RoPE promoted them), exactly:
        # a decoding step's fp32 attention then reads them as they are instead of converting the whole cache.
        assert ours.keys.dtype == ours.values.dtype == torch.float32
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values.float())
        assert ours.get_seq_length() == theirs.get_seq_length()

    for n in [5, 1, 1, 1, 1, 4, 1]:
        k, v = torch.randn(4, 2, n, 8), torch.randn(4, 2, n, 8).bfloat16()
        got, expected = ours.update(k, v), theirs.update(k, v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1].float())
        same()
    for change in (lambda lay: lay.batch_select_indices(torch.tensor([0, 2, 3])), lambda lay: lay.crop(-2),
                   lambda lay: lay.reorder_cache(torch.tensor([2, 0, 1])),
                   lambda lay: lay.batch_select_indices(torch.tensor([2, 1]))):
        change(ours), change(theirs)
        same()
        k, v = torch.randn(len(ours.keys), 2, 1, 8), torch.randn(len(ours.keys), 2, 1, 8).bfloat16()
        ours.update(k, v), theirs.update(k, v)
        same()


def test_a_narrow_reserved_layer_holds_bf16_keys_and_the_same_values(monkeypatch):
    """Held narrow (for the kernel's steps): the values as they came (bf16), the keys rounded to bf16 as a cast
    rounds them, through reserving again, rows leaving and cropping; an fp32 model's cache stays fp32."""
    from transformers.cache_utils import DynamicLayer

    import tunesmith.generate as generate

    monkeypatch.setattr(generate, "CACHE_ROOM", 3)
    ours, theirs = generate._reserved_layer_class(True)(), DynamicLayer()
    torch.manual_seed(0)
    for n in [5, 1, 1, 4, 1]:
        k, v = torch.randn(4, 2, n, 8), torch.randn(4, 2, n, 8).bfloat16()
        ours.update(k, v), theirs.update(k, v)
        assert ours.keys.dtype == ours.values.dtype == torch.bfloat16
        assert torch.equal(ours.keys, theirs.keys.bfloat16()) and torch.equal(ours.values, theirs.values)
    for change in (lambda lay: lay.batch_select_indices(torch.tensor([0, 2, 3])), lambda lay: lay.crop(-2)):
        change(ours), change(theirs)
        assert torch.equal(ours.keys, theirs.keys.bfloat16()) and torch.equal(ours.values, theirs.values)
    fp32 = generate._reserved_layer_class(True)()
    fp32.update(torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8))
    assert fp32.keys.dtype == fp32.values.dtype == torch.float32


def test_the_cache_is_held_in_bf16_only_for_the_kernel_s_steps(tiny_model_dir):
    """A model prepared for bf16 inference on a CPU where the kernel is built gets a narrow cache; SDPA's steps (an
    fp32 model, or no kernel) keep the wide one, which their fp32 step reads without converting it."""
    from tunesmith.generate import _new_cache
    from tunesmith.models.attention import decode_kernel
    from tunesmith.models.loading import load_model
    from tunesmith.models.precision import cpu_has_bf16, prepare_for_inference

    assert not _new_cache(prepare_for_inference(load_model(tiny_model_dir, device="cpu"), "fp32")).layer_class_to_replicate.NARROW
    if not cpu_has_bf16():
        return
    bf16 = prepare_for_inference(load_model(tiny_model_dir, device="cpu"), "bf16")
    assert _new_cache(bf16).layer_class_to_replicate.NARROW == (decode_kernel() is not None)
    from tunesmith.generate import kv_bytes_per_position  # a batch's cap counts the bytes the cache holds

    fp32 = prepare_for_inference(load_model(tiny_model_dir, device="cpu"), "fp32")
    assert kv_bytes_per_position(bf16) * (2 if decode_kernel() is not None else 1) == kv_bytes_per_position(fp32)


@pytest.mark.parametrize("keep", [[1, 3], [0, 2, 3], [3, 1]])  # rows leaving (moved up in place); any order
def test_rows_leaving_the_batch_stay_in_the_reserved_buffer(keep):
    """Selecting rows moves the kept ones to the front of the same buffer, and the next token is written in place:
    no new buffer the size of the cache each time rows leave."""
    import tunesmith.generate as generate

    layer = generate._reserved_layer_class()()
    layer.update(torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8))
    buffer, kept = layer._reserved[0].data_ptr(), layer.keys[torch.tensor(keep)].clone()
    layer.batch_select_indices(torch.tensor(keep))
    layer.update(torch.randn(len(keep), 2, 1, 8), torch.randn(len(keep), 2, 1, 8))
    assert layer._reserved[0].data_ptr() == layer.keys.data_ptr() == buffer
    assert torch.equal(layer.keys[..., :5, :], kept)


def test_generation_with_reserved_cache_equals_transformers_cache(tiny_model, tiny_tokenizer, monkeypatch):
    """Every row's answer with the reserved cache (re-reserved every 3 positions, rows leaving the batch) is the one
    transformers' own DynamicCache gives."""
    import tunesmith.generate as generate
    from tunesmith.generate import DROP_FINISHED_EVERY

    limits = [3, 2 * DROP_FINISHED_EVERY + 5, DROP_FINISHED_EVERY, DROP_FINISHED_EVERY + 1, 7]

    def rows():
        return [RowRequest(r.prompt_ids, max_new_tokens=n) for r, n in zip(_long_rows(tiny_tokenizer), limits)]

    with monkeypatch.context() as plain:  # no reserved cache: transformers' prefill and DynamicCache
        plain.setattr(generate, "_new_cache", lambda model: None)
        expected = generate_rows(tiny_model, tiny_tokenizer, rows(), batch_size=5, precision="fp32")
    assert [r.completion_tokens for r in expected] == limits
    monkeypatch.setattr(generate, "CACHE_ROOM", 3)
    for budget in (60, 10**9):  # prefilled in row groups, or by `generate` into the empty reserved cache
        monkeypatch.setattr(generate, "PREFILL_TOKENS", budget)
        assert generate_rows(tiny_model, tiny_tokenizer, rows(), batch_size=5, precision="fp32") == expected


def _joins(monkeypatch):
    """Records each continuous-batching join: (batch width before, width after, rows after)."""
    import tunesmith.generate as generate

    seen, join = [], generate._join

    def counting(model, input_ids, attention, cache, joining, pad_id, extra):
        out = join(model, input_ids, attention, cache, joining, pad_id, extra)
        seen.append((input_ids.shape[1], out[0].shape[1], out[0].shape[0]))
        return out

    monkeypatch.setattr(generate, "_join", counting)
    return seen


def test_requests_joining_a_running_batch_change_no_answer(tiny_model, tiny_tokenizer, monkeypatch):
    """Continuous batching: waiting requests take the places of rows that have ended, between `generate` calls. Every
    row's answer, finish reason and token count (greedy and sampled, each with its seed) are those it gets alone,
    including rows that join after the batch's padding columns were cut off."""
    from tunesmith.generate import DROP_FINISHED_EVERY

    prompts = [r.prompt_ids for r in _long_rows(tiny_tokenizer)] + [r.prompt_ids for r in _rows(tiny_tokenizer)]
    limits = [3, 2 * DROP_FINISHED_EVERY + 5, 5, DROP_FINISHED_EVERY + 1, 9, 2, 3 * DROP_FINISHED_EVERY, 7, 20]

    def rows():
        out = [RowRequest(p, max_new_tokens=n) for p, n in zip(prompts, limits)]
        for i in (1, 4):
            out[i].temperature, out[i].seed = 1.0, 50 + i
        out[7].stop = ["e"]
        return out

    joins = _joins(monkeypatch)
    fixed = generate_rows(tiny_model, tiny_tokenizer, rows(), batch_size=3, precision="fp32")
    assert not joins  # a list alone: fixed batches (measured faster on a CPU; generate_rows' docstring)
    # With `more` (serving), rows join a running batch: here the list's own waiting rows.
    together = generate_rows(tiny_model, tiny_tokenizer, rows(), batch_size=3, precision="fp32", more=lambda free: [])
    alone = [generate_rows(tiny_model, tiny_tokenizer, [r], batch_size=1, precision="fp32")[0] for r in rows()]
    assert together == alone == fixed
    assert len(joins) >= 3 and all(rows_after <= 3 for _, _, rows_after in joins)
    assert any(after < before for before, after, _ in joins)  # padding columns of ended rows were cut off


def test_join_cache_equals_one_forward_over_the_whole_batch(tiny_model, tiny_tokenizer):
    """`_join` of a longer prompt into a running batch of shorter ones (the batch padded on the left to the new
    width): at every real position the stacked cache holds the keys and values of one forward over the joined,
    left-padded batch, and zeros where the mask is 0."""
    import tunesmith.generate as generate

    short, long = _rows(tiny_tokenizer)[:2], _long_rows(tiny_tokenizer)[:1]
    width = max(len(r.prompt_ids) for r in short)
    input_ids, attention = generate._left_padded(short, width, tiny_tokenizer.pad_token_id)
    with torch.inference_mode():
        cache, _ = generate._prefill(tiny_model, input_ids, attention, {}, force=True)
        ids, mask, joined = generate._join(tiny_model, input_ids, attention, cache, long, tiny_tokenizer.pad_token_id,
                                           {})
        assert ids.shape[1] == len(long[0].prompt_ids) > width
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        whole = getattr(tiny_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                   position_ids=positions[:, :-1], use_cache=True), generate._kv())
    _assert_cache_of_one_forward(joined, whole, mask)


def test_joining_rows_keep_their_adapters(tiny_model_dir, tiny_tokenizer, two_adapters, monkeypatch):
    model = _two_adapter_model(tiny_model_dir, two_adapters)

    def rows():
        out = _long_rows(tiny_tokenizer, n=10) + _rows(tiny_tokenizer, max_new_tokens=6)
        for r, name, n in zip(out, ["alpha", BASE_ADAPTER, "beta", "alpha", "beta", BASE_ADAPTER, "alpha", "beta",
                                    "beta"], [3, 20, 4, 12, 6, 18, 5, 9, 2]):
            r.adapter, r.max_new_tokens = name, n
        return out

    joins = _joins(monkeypatch)
    joined = generate_rows(model, tiny_tokenizer, rows(), batch_size=2, precision="fp32", more=lambda free: [])
    assert joins
    assert joined == [generate_rows(model, tiny_tokenizer, [r], batch_size=1, precision="fp32")[0] for r in rows()]


def test_requests_arriving_mid_generation_join_and_are_answered_when_they_end(tiny_model, tiny_tokenizer,
                                                                              monkeypatch):
    """Serving: `more` is asked between `generate` calls for requests that arrived; they join the running batch,
    take the next indices, and `on_result` reports every row as it ends: a short late request is answered before
    the long one it joined, with the answer it gets alone."""
    from tunesmith.generate import DROP_FINISHED_EVERY

    first = [RowRequest(r.prompt_ids, max_new_tokens=n)
             for r, n in zip(_rows(tiny_tokenizer), [6 * DROP_FINISHED_EVERY, DROP_FINISHED_EVERY - 3])]
    late = [RowRequest(r.prompt_ids, max_new_tokens=n) for r, n in zip(_long_rows(tiny_tokenizer), [5, 11, 2])]
    arrivals = [[late[0]], [], [late[1], late[2]]]
    asked, ended = [], []

    def more(free):
        asked.append(free)
        return arrivals.pop(0) if arrivals else []

    joins = _joins(monkeypatch)
    results = generate_rows(tiny_model, tiny_tokenizer, first, batch_size=2, precision="fp32", more=more,
                            on_result=lambda i, r: ended.append(i))
    everyone = first + late
    assert results == [generate_rows(tiny_model, tiny_tokenizer, [r], precision="fp32")[0] for r in everyone]
    assert sorted(ended) == list(range(5)) and ended[-1] == 0  # the long first request ends last
    assert joins and max(asked) <= 2


def test_loop_detector_fires_on_a_block_repeated_three_times_over_enough_tokens():
    from tunesmith.generate import LoopDetector

    def first_firing(tokens, min_tokens):
        detector = LoopDetector(min_tokens)
        return next((i + 1 for i, t in enumerate(tokens) if detector.push(t)), None)

    block = [5, 6, 7, 8]
    assert first_firing([1, 2] + block * 5, 12) == 2 + 12  # the third block completes 12 tokens of period 4
    assert first_firing([1, 2] + block * 5, 16) == 2 + 16  # 16 tokens needed: the fourth block
    assert first_firing(list(range(40)) * 2, 16) is None  # a block of 40 twice: only 2 repeats
    assert first_firing(list(range(40)) * 3, 16) == 120
    assert first_firing([9] * 31, 32) is None and first_firing([9] * 32, 32) == 32
    assert first_firing(list(range(300)), 4) is None
    assert LoopDetector.fires_on([1, 2] + block * 3, 12) and not LoopDetector.fires_on([1, 2] + block * 2 + [5], 12)
    period = LoopDetector.MAX_PERIOD + 1  # longer blocks are not looked for
    assert first_firing(list(range(period)) * 4, 16) is None


class _Forced:
    """A TokenConstraint that makes the model say `tokens` in turn, over and over (a loop on demand)."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.i = tokens, 0

    def mask(self, scores: torch.Tensor) -> None:
        keep = self.tokens[self.i % len(self.tokens)]
        scores[:keep] = -float("inf")
        scores[keep + 1:] = -float("inf")

    def advance(self, token: int) -> None:
        self.i += 1


def test_a_row_stopped_in_a_loop_keeps_the_text_so_far_and_the_batch_is_unchanged(tiny_model, tiny_tokenizer):
    """A row made to repeat a 3-token block ends (finish "loop") at the 9th token, its text the loop so far; a row
    made to say 60 different tokens and the rows the model writes freely give what they give without stop_loops."""
    block, distinct = [300, 301, 302], list(range(300, 360))
    kwargs = dict(max_new_tokens=40)

    def run(stop_loops):
        rows = _rows(tiny_tokenizer, stop_loops=stop_loops, **kwargs)
        rows[0].constraint, rows[1].constraint = _Forced(block), _Forced(distinct)
        return generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")

    free, stopped = run(0), run(8)
    assert (stopped[0].finish_reason, stopped[0].completion_tokens) == ("loop", 9)  # 3 blocks = 9 >= 8 tokens
    assert stopped[0].text == tiny_tokenizer.decode(block * 3) and free[0].text.startswith(stopped[0].text)
    assert (free[0].finish_reason, free[0].completion_tokens) == ("length", 40)
    for a, b in zip(free[1:], stopped[1:]):
        assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
    assert stopped[1].finish_reason == "length"


def test_a_loop_stop_that_would_cut_a_reference_is_reported(tiny_tokenizer):
    from tunesmith.generate import loop_stop_warning

    refs = ["ASK { ?a ?b ?c }", "SELECT ?a WHERE { " + "?a <p> ?b . " * 6 + "}"]
    assert "would stop 1 of 2 references before their end (the first: item 2)" in \
        loop_stop_warning(tiny_tokenizer, refs, 16, "generation.stop_loops")
    assert loop_stop_warning(tiny_tokenizer, refs, 0, "generation.stop_loops") is None
    assert loop_stop_warning(tiny_tokenizer, refs[:1], 16, "generation.stop_loops") is None


def test_the_dblp_quad_eval_stops_no_reference_as_a_loop(tiny_tokenizer):
    """examples/dblp_quad/eval.yaml stops looping answers and answers that write another passage: no reference of
    the data it scores would be stopped (the tiny model has SmolLM2's tokenizer)."""
    import json
    from pathlib import Path

    from tunesmith.config import read_config
    from tunesmith.data.iris import compact
    from tunesmith.eval.config import EvalConfig
    from tunesmith.generate import loop_stop_warning

    root = Path(__file__).resolve().parents[2]
    cfg = read_config(EvalConfig, root / "examples" / "dblp_quad" / "eval.yaml")
    assert cfg.generation.stop_loops > 0
    lines = (root / "examples" / "dblp_quad" / "data" / "valid.jsonl").read_text().splitlines()
    refs = [compact(json.loads(line)["sparql"], cfg.data.iri_prefixes) for line in lines]
    assert len(refs) == 1000
    assert loop_stop_warning(tiny_tokenizer, refs, cfg.generation.stop_loops, "generation.stop_loops") is None
    assert not [r for r in refs if any(s in r for s in cfg.generation.stop)]
