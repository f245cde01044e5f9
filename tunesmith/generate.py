"""`tunesmith generate` / `tunesmith chat`: answers from a base model, a trained run, or a merged model.

Prompts go through the same `render_prompt` as training data, so the template cannot drift between the two.
Many prompts are generated together: sorted by length, left-padded, KV-cached, each stopping at end-of-turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional, Protocol

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.cli import ThreadsOpt
from tunesmith.data.formats import parse_messages
from tunesmith.data.iris import compact_messages, expand
from tunesmith.data.tokenize import render_prompt
from tunesmith.files import iter_jsonl, read_text
from tunesmith.models.loading import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model
from tunesmith.models.precision import autocast, prepare_for_inference, resolve_precision
from tunesmith.records import IGNORE_INDEX, DataError, DataIssue, Message, TunesmithError
from tunesmith.threads import use_threads

console = Console(stderr=True)


@dataclass
class LoadedRun:
    run: Path  # the folder that holds the trained output (a multi-stage run's last stage)
    cfg: object  # its RunConfig
    method: object
    objective: object
    model: object
    tokenizer: object
    label_names: list[str]


def load_run(run: str | Path, device: str = "auto", merge: bool = True) -> LoadedRun:
    """A run folder → its base model with what it trained, loaded the way the method trained it (a qlora base in
    4 bit), merged in memory where the method merges (`merge`), else with its layers in place."""
    from tunesmith.config import load_config
    from tunesmith.methods.base import get_method
    from tunesmith.objectives.base import get_objective, saved_labels
    from tunesmith.train.stages import last_stage_dir

    run = last_stage_dir(Path(run))
    if not (run / "config.yaml").exists():
        raise TunesmithError(f"{run} is not a tunesmith run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    final = run / "final"
    if not final.exists():
        raise TunesmithError(f"{run} has no trained output yet ({final} missing): did training finish?")
    method, objective = get_method(cfg.method.name), get_objective(cfg.objective.name)
    base_path = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(final)
    labels = saved_labels(final)
    task = objective.task(cfg, labels, base_path, tokenizer)
    trained = method.load(method.load_base(base_path, cfg.method, device, task), final, task)
    if merge and method.mergeable:
        trained = method.merge(trained)
    return LoadedRun(run, cfg, method, objective, trained.eval(), tokenizer, labels)


def run_data_config(run: str | Path):
    """The `data:` section a run trained with (a multi-stage run's last stage): how its prompts were written."""
    from tunesmith.config import load_config
    from tunesmith.train.stages import last_stage_dir

    return load_config(last_stage_dir(Path(run)) / "config.yaml").data


def load_for_inference(run: str | Path | None = None, model: str | None = None, device: str = "auto",
                       merge: bool = True, precision: str | None = None):
    """(model, tokenizer) for a run folder (base + its trained output), or a model name/folder as is.

    With `precision` (what generation and scoring will run at) the model is prepared to only answer:
    nothing trains, and under bf16 its Linear weights are stored in bf16 once instead of being re-cast by autocast
    for every token (the same numbers; tunesmith.models.precision.prepare_for_inference). Without it (a student
    built from the weights, a teacher that casts itself) the weights stay as loaded.

    A run's adapter is merged into the base weights in memory by default: the same function (merged == unmerged is
    tested) without the adapter's extra matmuls on every generated token. Methods that do not merge (bottleneck
    adapters, virtual tokens, a 4-bit base) are loaded with their trained layers in place.
    """
    if run is None:
        path = resolve_model(model or DEFAULT_MODEL)
        loaded_model, tokenizer = load_model(path, device=device).eval(), load_tokenizer(path)
    else:
        loaded = load_run(run, device, merge)
        if not loaded.objective.generates:
            raise TunesmithError(f"{run} trained a {loaded.cfg.objective.name} head: it labels text instead of "
                                 f"answering; use `tunesmith predict --run {run} --input FILE`")
        loaded_model, tokenizer = loaded.model, loaded.tokenizer
    if precision is not None:
        prepare_for_inference(loaded_model, precision)
    return loaded_model, tokenizer


def is_run_folder(path: str | Path) -> bool:
    """True for a tunesmith run folder (it holds the run's config.yaml), as opposed to a model folder or name."""
    return (Path(path).expanduser() / "config.yaml").is_file()


def load_run_or_model(name: str | Path, device: str = "auto", precision: str | None = None):
    """(model, tokenizer) for a name that is either a run folder (its trained output, merged where it merges) or a
    model (embedded name, local folder, .gguf): teachers of `data generate`, distillation and `tunesmith student`."""
    if is_run_folder(name):
        return load_for_inference(run=name, device=device, precision=precision)
    return load_for_inference(model=str(name), device=device, precision=precision)


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


class TokenConstraint(Protocol):
    """Restricts which tokens one row may generate next (grammar / JSON-schema decoding: tunesmith.guardrails)."""

    def mask(self, scores: torch.Tensor) -> None:
        """Set the scores (one row, whole vocabulary) of every token not allowed next to -inf, in place."""

    def advance(self, token: int) -> None:
        """The row generated `token`."""


class LoopDetector:
    """Says when a token sequence has fallen into a loop: its last tokens are one block repeated back to back.

    Greedy decoding that starts repeating itself ("?answer dblp:publisher ?answer . ?answer dblp:publisher ...", a
    title over and over) almost never leaves the loop: the answer runs on to the token limit, and every row of its
    batch waits for it. `push` returns True once the tail is a block of at most MAX_PERIOD tokens repeated at least
    3 times and spanning at least `min_tokens`. transformers has no such stopping criterion (its repetition
    penalties change the answers instead), hence this one. O(MAX_PERIOD) per token: for each period p, the length
    of the run of positions whose token equals the one p before.
    """

    MAX_PERIOD = 64

    def __init__(self, min_tokens: int):
        self.min_tokens = min_tokens
        self.tokens: list[int] = []
        self.runs = [0] * self.MAX_PERIOD  # runs[p - 1]: trailing positions i with tokens[i] == tokens[i - p]

    def push(self, token: int) -> bool:
        self.tokens.append(token)
        n, looped = len(self.tokens), False
        for p in range(1, min(self.MAX_PERIOD, n - 1) + 1):
            run = self.runs[p - 1] + 1 if self.tokens[-1 - p] == token else 0
            self.runs[p - 1] = run
            # the last run + p tokens have period p: at least 3 blocks and at least min_tokens tokens
            looped = looped or run >= max(2 * p, self.min_tokens - p)
        return looped

    @classmethod
    def fires_on(cls, tokens: list[int], min_tokens: int) -> bool:
        """Whether the rule would stop this sequence anywhere (e.g. a reference answer: then it must stay off)."""
        detector = cls(min_tokens)
        return any(detector.push(t) for t in tokens)


BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a per-row `adapter_names` list


@dataclass
class RowRequest:
    """One prompt and how to continue it. Rows with different settings generate together in one batch."""

    prompt_ids: list[int]
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # sampling only; a row's samples depend on its seed alone, not on its batch
    stop: list[str] = field(default_factory=list)  # the text ends before the first of these; not included
    adapter: str | None = None  # a LoRA adapter on the model (peft `adapter_names`), BASE_ADAPTER for none of them;
    # None: the model as it is (its active adapter, if any)
    constraint: TokenConstraint | None = None
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    cancelled: Callable[[], bool] | None = None  # polled every token; True ends the row (finish_reason "cancelled")
    # End the row (finish_reason "loop") once its last `stop_loops` or more tokens are one block repeated 3 or more
    # times (LoopDetector); the text up to there is kept. 0: never. For scoring where a looping answer is wrong anyway.
    stop_loops: int = 0
    # Scoring a given continuation of the prompt (eval's reference answer) while its prompt is prefilled anyway: the
    # tokens that follow the prompt, and which of them count (default: all). See `_prefill`.
    continuation: list[int] = field(default_factory=list)
    scored: list[bool] | None = None


@dataclass
class RowResult:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string), "length", "cancelled", "loop" (RowRequest.stop_loops)
    prompt_tokens: int
    completion_tokens: int
    # The continuation's summed cross-entropy (nats) over its scored tokens, and how many; None when the row had no
    # continuation or it could not be scored here (virtual-token methods, special cache layers, per-row adapters)
    continuation_loss: float | None = None
    continuation_scored: int = 0


class _Rows:
    """Per-row bookkeeping of one batch: text, stop strings, limits, streaming, constraints.

    transformers calls the logits processor before each token is chosen and the stopping criteria after it is
    appended (with the whole sequence), and both hooks accept per-row answers, so everything per-request rides on
    ordinary `generate` calls instead of a decoding loop of our own. `active` maps the rows of the current
    `generate` call to the requests: finished rows leave the batch between calls, and in serving requests that
    arrived take their places (generate_rows).
    """

    def __init__(self, requests: list[RowRequest], tokenizer, stops: list[int], device):
        self.tokenizer, self.stops, self.device = tokenizer, set(stops), device
        self.requests: list[RowRequest] = []
        self.tokens: list[list[int]] = []
        self.text: list[str] = []  # decoded text, cut at a stop string once one appears
        self.sent: list[int] = []  # characters already handed to on_text
        self.finish: list[str | None] = []
        self.generators: list[torch.Generator | None] = []
        self.scores: list[tuple[float, int] | None] = []  # (summed loss, scored tokens) of each row's continuation
        self.loops: list[LoopDetector | None] = []
        self.eos = min(stops)
        self.active: list[int] = []  # the requests in the rows of the current `generate` call, in row order
        self.add(requests)

    def add(self, requests: list[RowRequest]) -> None:
        """Requests that arrived while the others generate (serving); they take the next indices."""
        for r in requests:
            self.requests.append(r)
            self.tokens.append([])
            self.text.append("")
            self.sent.append(0)
            self.finish.append(None)
            self.scores.append(None)
            self.loops.append(LoopDetector(r.stop_loops) if r.stop_loops else None)
            self.generators.append(torch.Generator(device=self.device).manual_seed(r.seed if r.seed is not None else 0)
                                   if r.temperature > 0 else None)

    def unfinished(self) -> list[int]:
        """Positions (in the current call) of the rows still generating."""
        return [i for i, r in enumerate(self.active) if self.finish[r] is None]

    # LogitsProcessor hook
    def process(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        for i, r in enumerate(self.active):
            req = self.requests[r]
            if self.finish[r] is not None:
                continue
            row = scores[i : i + 1]
            if req.constraint is not None:
                req.constraint.mask(row[0])
                if torch.isinf(row).all():  # nothing allowed (grammar finished or failed): end the turn
                    row[0, self.eos] = 0.0
            if req.temperature > 0:
                # Per-row sampling with the row's own generator; generate() then runs greedy over one finite score.
                row = TemperatureLogitsWarper(req.temperature)(input_ids[i : i + 1], row)
                if req.top_p < 1.0:
                    row = TopPLogitsWarper(req.top_p)(input_ids[i : i + 1], row)
                choice = torch.multinomial(torch.softmax(row.float(), dim=-1), 1, generator=self.generators[r])
                scores[i].fill_(-float("inf"))
                scores[i, choice.item()] = 0.0
        return scores

    # StoppingCriteria hook
    def step(self, input_ids: torch.LongTensor, scores) -> torch.BoolTensor:
        done = torch.zeros(len(self.active), dtype=torch.bool, device=input_ids.device)
        for i, r in enumerate(self.active):
            if self.finish[r] is None:
                self._advance(r, self.requests[r], int(input_ids[i, -1]))
            done[i] = self.finish[r] is not None
        return done

    def _advance(self, r: int, req: RowRequest, token: int) -> None:
        if token in self.stops:
            self._end(r, "stop")
            return
        self.tokens[r].append(token)
        if req.constraint is not None:
            req.constraint.advance(token)
        text = self.tokenizer.decode(self.tokens[r], skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in req.stop) if i >= 0]
        if hits:
            self.text[r] = text[: min(hits)]
            self._end(r, "stop")
            return
        self.text[r] = text
        if self.loops[r] is not None and self.loops[r].push(token):
            self._end(r, "loop")
        elif len(self.tokens[r]) >= req.max_new_tokens:
            self._end(r, "length")
        elif req.cancelled is not None and req.cancelled():
            self._end(r, "cancelled")
        else:
            self._emit(r, final=False)

    def _end(self, r: int, reason: str) -> None:
        self.finish[r] = reason
        self._emit(r, final=True)

    def _emit(self, r: int, final: bool) -> None:
        callback = self.requests[r].on_text
        if callback is None:
            return
        text, end = self.text[r], len(self.text[r])
        if not final:
            if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest of it
                return
            # Hold back a tail that could still become a stop string, so a stop string is never streamed.
            for s in self.requests[r].stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        if end > self.sent[r]:
            callback(text[self.sent[r] : end])
            self.sent[r] = end


def _with_virtual_prompt(model, input_ids, attention, pad_id: int, extra: dict):
    """(what to call generate on, input_ids, attention_mask), with the virtual tokens of prompt tuning, p-tuning or
    prefix tuning in place.

    peft injects those virtual tokens in its own `prepare_inputs_for_generation`, which looks for the KV cache under
    `past_key_values`; recent transformers 5 releases pass it as `cache` (`_kv`), so peft (0.21) sees no cache at
    any step and prepends the whole prompt again before every new token: wrong answers, and a KV cache that grows by
    21 positions a token. Its prefix-tuning branch puts the learned keys/values under `past_key_values` too, where
    those releases never look: the trained prefix is silently ignored. So, whatever the release, the base model
    generates on its own with the virtual tokens given once: prompt tuning / p-tuning as the first forward's input
    embeddings, prefix tuning as a KV cache that already holds them. Either way the row is [virtual tokens][left
    padding][prompt], positions from the mask, as peft's forward trains it (the method battery checks greedy
    generation against the argmax of that forward).
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return model, input_ids, attention
    if "adapter_names" in extra:
        raise TunesmithError("per-row adapters are not available with virtual-token methods")
    rows, virtual = input_ids.shape[0], config.num_virtual_tokens
    if config.peft_type == "PREFIX_TUNING":  # learned keys/values in every layer: a KV cache `virtual` long
        extra[_kv()] = model.get_prompt(batch_size=rows)
    else:  # learned input embeddings before the prompt's
        prompt = model.get_prompt(batch_size=rows)  # (rows, virtual, hidden)
        embeds = model.get_base_model().get_input_embeddings()(input_ids)
        extra["inputs_embeds"] = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
    input_ids = torch.cat([input_ids.new_full((rows, virtual), pad_id), input_ids], dim=1)
    attention = torch.cat([attention.new_ones((rows, virtual)), attention], dim=1)
    return model.get_base_model(), input_ids, attention


@lru_cache(maxsize=None)
def _kv() -> str:
    """The name transformers gives the KV cache in `forward`/`generate` arguments and in their outputs: `cache` in
    recent 5.x releases, `past_key_values` in earlier ones (5.17 still), which pyproject's range allows. The API of
    the cache itself (Cache, DynamicLayer) is the same in both."""
    import inspect

    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


DROP_FINISHED_EVERY = 16  # new tokens per `generate` call; finished rows leave the batch between calls
CACHE_ROOM = 256  # positions a KV cache layer reserves beyond what it holds; see ReservedLayer


@lru_cache(maxsize=None)
def _reserved_layer_class(narrow: bool = False):
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """transformers' DynamicLayer, whose keys and values are views into a buffer with room for CACHE_ROOM more
        positions, written in place: DynamicLayer concatenates the whole cache with each new token, and at 700
        cached positions × 25 rows × 30 layers those copies took more time than the step's matmuls (SmolLM2-135M,
        2 threads). Cropping, row selection (rows leaving the batch) and reordering keep DynamicLayer's code; the
        next update sees that the views no longer point into the buffer and reserves a new one.

        Keys and values are held in one dtype. The wider of the two by default: under bf16 autocast the values (a
        Linear's output) are bf16 and the keys fp32 (RoPE promoted them), and a decoding step's fp32 attention
        (tunesmith.models.attention) converted the whole value cache at every token: at 25 rows × 1,000 positions
        that was 0.26 s a step, 0.21 s with the values held in fp32 (the same numbers; 2 threads). The narrower
        where `narrow` (class NARROW): for models whose steps attend through tunesmith's CPU kernel, which reads a
        bf16 cache as it is. A step's attention reads the whole cache and is bound by memory: half the bytes took
        1.15-1.96x less time a layer (bench/decode_attention.py). The values are the same (v_proj's bf16 output);
        the keys are rounded to bf16 as SDPA under autocast rounds them (and as the kernel's prefill does)."""

        NARROW = narrow

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            held, new = self.get_seq_length(), key_states.shape[-2]
            buffers = getattr(self, "_reserved", None)
            if buffers is None or held + new > buffers[0].shape[-2] or buffers[0].shape[0] != key_states.shape[0] \
                    or held and self.keys.data_ptr() != buffers[0].data_ptr():
                size = held + new + CACHE_ROOM
                dtype = torch.promote_types(key_states.dtype, value_states.dtype)
                if self.NARROW:
                    dtype = min(key_states.dtype, value_states.dtype, key=lambda t: t.itemsize)
                buffers = tuple(states.new_empty((*states.shape[:-2], size, states.shape[-1]), dtype=dtype)
                                for states in (key_states, value_states))
                if held:
                    buffers[0][..., :held, :], buffers[1][..., :held, :] = self.keys, self.values
                self._reserved = buffers
            buffers[0][..., held : held + new, :], buffers[1][..., held : held + new, :] = key_states, value_states
            self.keys, self.values = buffers[0][..., : held + new, :], buffers[1][..., : held + new, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Rows leaving the batch: the rows kept move to the front of the same buffer. DynamicLayer's indexing
            copied them into a new tensor, and the next update copied them again into a newly reserved buffer:
            fresh memory of the cache's size each time rows leave (a few-shot batch of 25 rows at ~1,000 positions:
            a GB per event, its pages faulted in anew)."""
            buffers = getattr(self, "_reserved", None)
            held = self.get_seq_length()
            if buffers is None or not held or self.keys.data_ptr() != buffers[0].data_ptr():
                return super().batch_select_indices(indices)
            order, rows = indices.tolist(), len(indices)
            for buffer in buffers:
                if all(a < b for a, b in zip(order, order[1:])):  # rows leaving: each kept row moves up, in place (a
                    # row is written only after it has been read: sources lie at or after their destinations)
                    for to, source in enumerate(order):
                        if to != source:
                            buffer[to, ..., :held, :] = buffer[source, ..., :held, :]
                else:  # any other order: gathered first, then written back
                    buffer[:rows, ..., :held, :] = buffer[indices, ..., :held, :]
            self._reserved = tuple(buffer[:rows] for buffer in buffers)
            self.keys, self.values = self._reserved[0][..., :held, :], self._reserved[1][..., :held, :]

    return ReservedLayer


@lru_cache(maxsize=None)
def _reserved_cache_class(narrow: bool = False):
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    class ReservedCache(DynamicCache):
        """A DynamicCache of ReservedLayers (built with Cache's own `layer_class_to_replicate`)."""

        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=_reserved_layer_class(narrow))

    return ReservedCache


def _new_cache(model):
    """An empty cache of ReservedLayers for a model whose own cache would be plain DynamicLayers; else None
    (sliding-window and other special layers: `generate` builds the model's own cache). Held in bf16 under autocast
    where the model's steps attend through tunesmith's CPU kernel (ReservedLayer)."""
    from tunesmith.models.attention import has_plain_cache_layers, steps_read_bf16_cache

    config = getattr(model, "config", None)
    return _reserved_cache_class(steps_read_bf16_cache(config))() if has_plain_cache_layers(config) else None


PREFILL_TOKENS = 1024  # prompt tokens per prefill forward (rows × their width); see `_prefill`
BATCH_CACHE_BYTES_CPU = 3 << 30  # the most KV cache a batch may fill on a CPU (less with under 24 GB of memory)


def kv_bytes_per_position(model) -> int | None:
    """Bytes of KV cache one row takes per position (keys and values of every layer, held in fp32 as ReservedLayer
    holds them under autocast, or in bf16 for the kernel's steps), from the model's config; None where the config
    does not say."""
    from tunesmith.models.attention import steps_read_bf16_cache

    config = getattr(model, "config", None)
    held = 2 if steps_read_bf16_cache(config) else 4
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        layers = config.num_hidden_layers
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    except AttributeError:
        return None
    return int(layers) * 2 * int(heads) * int(head_dim) * held


def default_cache_bytes(model) -> int:
    """What a batch's KV cache may take by default: on a CPU an eighth of the machine's memory, at most
    BATCH_CACHE_BYTES_CPU (the process's peak RSS grows by about twice the cache: 3.6 → 6.5 GB from 25 rows of
    ~590-token prompts to about 50, by the cap's arithmetic, docs/benchmarks.md); on a GPU half its free memory."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    import psutil

    return min(BATCH_CACHE_BYTES_CPU, psutil.virtual_memory().total // 8)


def rows_that_fit(model, waiting: list[RowRequest], rows: int, max_cache_bytes: int | None) -> int:
    """How many of `waiting` (longest prompt first) start a batch: at most `rows`, and no more than keep the batch's
    KV cache, every row as wide as the longest prompt plus the most new tokens any of them may write plus CACHE_ROOM,
    within `max_cache_bytes`; always one.

    Why big batches, and why the cap: decoding on a CPU reads every weight once a step whatever the rows, so rows
    are nearly free up to where compute takes over (SmolLM2-135M in fp32, 2 threads, the 5 Linear shapes of a layer:
    1.43 ms a row at 25 rows, 0.68 at 100); the cache, though, grows with rows × positions, and a batch of long
    prompts (few-shot, RAG) at the row count that suits short ones would fill many GB (docs/benchmarks.md)."""
    per_position = kv_bytes_per_position(model) if max_cache_bytes is not None else None
    if per_position is None or rows <= 1:
        return max(1, rows)
    candidates = waiting[:rows]
    width = max(len(r.prompt_ids) for r in candidates)
    longest = max(r.max_new_tokens for r in candidates)
    return max(1, min(rows, max_cache_bytes // ((width + longest + CACHE_ROOM) * per_position)))


def _prefill(model, input_ids: torch.Tensor, attention: torch.Tensor, extra: dict, force: bool = False,
             continuations: list[tuple[list[int], list[bool]]] | None = None,
             ) -> tuple[object | None, list[tuple[float, int] | None]]:
    """(the KV cache of every prompt token but the last, computed a few rows at a time, or None to leave the prefill
    to `generate`; the scores of the rows' continuations).

    One forward over the whole left-padded batch is the slow way on a CPU: measured on SmolLM2-135M (2 threads,
    bf16), 25 few-shot DBLP-QuAD prompts of 450-780 tokens took 49.8 s as one forward and 17.4 s in forwards of
    at most 1,024 tokens, whose activations stay in cache (25 × 600 random tokens: 26 s). So rows (sorted longest
    first) go through in groups of at most PREFILL_TOKENS tokens, each group padded only to its own longest row,
    and the groups' caches are stitched into the batch's left-padded cache (zeros where the mask is 0, never
    attended to), a cache of ReservedLayers. Positions are those `generate` gives a left-padded row (the mask's
    cumulative sum), so the answer is the one a single `generate` call gives (tests/unit/test_generate_rows.py).
    Virtual-token methods (a prompt or a prefix of their own), models with sliding-window or other special cache
    layers, and small batches keep transformers' own prefill, unless `force` (rows joining a running batch, whose
    cache must be computed here to be merged into the batch's).

    `continuations` (one (token ids, scored) per row; empty ids for none): once the prompts of a few groups are in
    their caches (about 2 × PREFILL_TOKENS continuation tokens), their rows' continuations go through forwards that
    continue from those caches (the prompt's last token, then the continuation; `_score_continuations`), and the
    cross-entropy of their scored tokens is summed as the training loss sums it (`TrainedTokenLoss`: logits at the
    scored positions only). This is how eval measures the loss of the reference
    answers: before, every prompt went through the model twice, once to answer and once for the reference's loss
    (for the ~600-token few-shot and RAG prompts of the DBLP-QuAD eval that second pass was a quarter of the eval's
    time). The prompt's forward, and so the cache the answer is generated from, is exactly what it is without a
    continuation: the answers do not change (an earlier version ran prompt and continuation as one forward, and
    under bf16 the changed shapes moved 8-30% of the answers by a near-tie token). Scored only where this prefill
    runs and no row has an adapter of its own (the continuation goes through the backbone, as training's loss does).
    """
    from transformers.cache_utils import DynamicLayer

    from tunesmith.train.loss import TrainedTokenLoss

    rows, width = input_ids.shape
    none: list[tuple[float, int] | None] = [None] * rows
    scoring = bool(continuations) and any(ids for ids, _ in continuations) and "adapter_names" not in extra
    if scoring:
        try:
            head = TrainedTokenLoss(model)
        except NotImplementedError:  # logits the training loss cannot score: left to `reference_loss`, which says so
            scoring = False
    own = force or rows * width > PREFILL_TOKENS  # else `generate` prefills (a continuation is scored all the same)
    if _kv() in extra or "inputs_embeds" in extra or width < 2 or not (own or scoring):
        return None, none
    cache = _new_cache(model)
    if cache is None:  # sliding-window or other special layers: transformers' own prefill knows them
        return None, none
    lengths = attention.sum(-1).tolist()
    groups, start = [], 0
    while start < rows:  # a group is as wide as its longest row (rows come sorted longest first: its first)
        end = start + 1
        while end < rows and (end - start + 1) * max(lengths[start : end + 1]) <= PREFILL_TOKENS:
            end += 1
        groups.append((start, end))
        start = end
    scores = list(none)
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    waiting: list[tuple[int, int, int, list[tuple[torch.Tensor, torch.Tensor]]]] = []  # groups' rows to be scored
    for start, end in groups:
        cut = width - max(*lengths[start:end], 2)  # the group's own width; the last prompt token is left to `generate`
        ids, mask = input_ids[start:end, cut:-1], attention[start:end, cut:-1]
        kwargs = {"adapter_names": extra["adapter_names"][start:end]} if "adapter_names" in extra else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0),
                    use_cache=True, logits_to_keep=1, **kwargs)
        group_cache = getattr(out, _kv())
        if any(type(lay) is not DynamicLayer for lay in group_cache.layers):
            return None, none  # the forward's own cache has special layers after all
        prompt_cache = [(lay.keys, lay.values) for lay in group_cache.layers]  # never appended to: answers come from it
        if scoring and any(continuations[i][0] for i in range(start, end)):
            waiting.append((start, end, cut, prompt_cache))
            if sum(1 + len(continuations[i][0]) for s, e, _, _ in waiting for i in range(s, e)) >= 2 * PREFILL_TOKENS:
                _score_continuations(head, waiting, input_ids, attention, continuations, scores)
                waiting = []
        for layer, (keys, values) in enumerate(prompt_cache):
            if layer == len(layers):
                layers.append([])
            pad = (0, 0, cut, 0)  # (head dim, sequence): zeros before the group's columns
            layers[layer].append((torch.nn.functional.pad(keys, pad), torch.nn.functional.pad(values, pad)))
    if waiting:
        _score_continuations(head, waiting, input_ids, attention, continuations, scores)
    if not own:
        return None, scores
    for layer, parts in enumerate(layers):
        cache.update(torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts]), layer)
        layers[layer] = []  # the groups' copies of this layer go now, not when the whole cache is built
    return cache, scores


def _score_continuations(head, groups: list[tuple[int, int, int, list[tuple[torch.Tensor, torch.Tensor]]]],
                         input_ids: torch.Tensor, attention: torch.Tensor,
                         continuations: list[tuple[list[int], list[bool]]],
                         scores: list[tuple[float, int] | None]) -> None:
    """Sets scores[r] to (summed cross-entropy of the scored tokens, their number) of the continuation of each row r
    of `groups` that has one. `groups`: consecutive prefill groups (start row, end row, first column, the group's
    prompt cache: every prompt token but the last, from that column); `input_ids`, `attention`: the batch's
    left-padded prompts, last token included.

    The groups' rows go through in chunks of similar continuation length, longest first, each at most PREFILL_TOKENS
    tokens of continuation (or one row), each from a cache gathered from its rows' groups, as wide as the widest of
    them. Why chunks over several groups: one forward per group padded every row to the group's longest continuation
    (for the DBLP-QuAD eval's references, 20-198 tokens, 64 on average, most of such a forward was padding); chunks
    of one group's rows each left the long-prompt variants, whose groups hold 2 rows, with forwards of about 200
    tokens, whose matmuls run well below those of the prefill's 1,024 (scoring cost 1.5 times a prompt token's time
    per token). Groups come longest prompt first, so the groups scored together have nearly the same width (scoring
    across the whole batch made every chunk as wide as its longest prompt: slower)."""
    from transformers import DynamicCache

    order = sorted((r for s, e, _, _ in groups for r in range(s, e) if continuations[r][0]),
                   key=lambda r: -len(continuations[r][0]))
    chunks: list[list[int]] = []
    for r in order:  # longest first: a chunk's first row sets its width
        if chunks and (len(chunks[-1]) + 1) * (1 + len(continuations[chunks[-1][0]][0])) <= PREFILL_TOKENS:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    group_of = {r: g for g in groups for r in range(g[0], g[1])}
    for chunk in chunks:
        cut = min(group_of[r][2] for r in chunk)
        cache = DynamicCache()
        for layer in range(len(groups[0][3])):
            parts = [[], []]
            for r in chunk:
                start, _, first, held = group_of[r]
                for part, tensor in zip(parts, held[layer]):  # the row's keys, values; zeros before its group's
                    part.append(torch.nn.functional.pad(tensor[r - start : r - start + 1], (0, 0, first - cut, 0)))
            cache.update(torch.cat(parts[0]), torch.cat(parts[1]), layer)
        for r, score in zip(chunk, _score_rows(head, cache, input_ids[chunk, cut:], attention[chunk, cut:],
                                                [continuations[r] for r in chunk])):
            scores[r] = score


def _score_rows(head, cache, input_ids: torch.Tensor, attention: torch.Tensor,
                continuations: list[tuple[list[int], list[bool]]]) -> list[tuple[float, int] | None]:
    """`_score_continuations` for rows that all have a continuation, in one forward of [the prompt's last token]
    [continuation][right padding] from `cache`. Positions run on from the prompt's (the mask's cumulative sum, as
    generation gives them)."""
    from tunesmith.train.loss import causal_lm_of

    rows, follow = input_ids.shape[0], max(len(tokens) for tokens, _ in continuations)
    ids = torch.zeros((rows, 1 + follow), dtype=input_ids.dtype, device=input_ids.device)  # padding: any id, masked
    mask = torch.zeros_like(ids)
    targets = torch.full_like(ids, IGNORE_INDEX)
    ids[:, 0], mask[:, 0] = input_ids[:, -1], 1
    for row, (tokens, counted) in enumerate(continuations):
        ids[row, 1 : 1 + len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
        mask[row, 1 : 1 + len(tokens)] = 1
        # column c predicts the token at column c + 1: the prompt's last token predicts the continuation's first
        targets[row, : len(tokens)] = torch.tensor([t if keep else IGNORE_INDEX for t, keep in zip(tokens, counted)],
                                                   dtype=ids.dtype)
    whole = torch.cat([attention[:, :-1], mask], dim=1)
    positions = (whole.cumsum(-1) - 1).masked_fill(whole == 0, 0)[:, -ids.shape[1]:]
    lm = causal_lm_of(head.model)
    out = getattr(lm, lm.base_model_prefix)(input_ids=ids, attention_mask=whole, position_ids=positions,
                                            use_cache=True, **{_kv(): cache})
    trained = targets != IGNORE_INDEX
    losses = torch.nn.functional.cross_entropy(head.logits_of(out.last_hidden_state[trained]), targets[trained],
                                               reduction="none")
    row_of = trained.nonzero()[:, 0]
    return [(float(losses[row_of == row].sum()), int((row_of == row).sum())) if tokens else None
            for row, (tokens, _) in enumerate(continuations)]


def _left_padded(requests: list[RowRequest], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the prompts, left-padded to `width`: every prompt ends where generation starts."""
    input_ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(requests), width), dtype=torch.long)
    for row, req in enumerate(requests):
        input_ids[row, width - len(req.prompt_ids):] = torch.tensor(req.prompt_ids, dtype=torch.long)
        attention[row, width - len(req.prompt_ids):] = 1
    return input_ids, attention


def _join(model, input_ids, attention, cache, joining: list[RowRequest], pad_id: int, extra: dict):
    """The running batch with `joining`'s prompts added as new rows (continuous batching), or None where their cache
    cannot be merged.

    The new prompts are prefilled on their own (`_prefill`, forced) at the batch's width, or the batch is padded on
    the left to theirs; both caches are then stacked row-wise into a new cache, left padding as every row had it from
    the start: zeros in the cache, 0 in the mask, positions from the mask's cumulative sum (transformers' convention
    for left-padded generation), so a row's keys, values and answer are those it gets in a batch of its own
    (tests/unit/test_generate_rows.py). Columns that are padding in every row (left by rows that have ended) are cut
    off, so the batch is never wider than its longest row. Costs one copy of the cache per join.
    """
    width = max(input_ids.shape[1], max(len(r.prompt_ids) for r in joining))
    new_ids, new_attention = (t.to(input_ids.device) for t in _left_padded(joining, width, pad_id))
    new_cache, _ = _prefill(model, new_ids, new_attention, extra, force=True)
    if new_cache is None or len(new_cache.layers) != len(cache.layers):
        return None
    grow = width - input_ids.shape[1]
    input_ids = torch.cat([torch.nn.functional.pad(input_ids, (grow, 0), value=pad_id), new_ids])
    attention = torch.cat([torch.nn.functional.pad(attention, (grow, 0)), new_attention])
    lead = min(int(attention.any(0).int().argmax()), width - 2)  # columns of padding in every row
    merged = _new_cache(model)
    for layer, (old, new) in enumerate(zip(cache.layers, new_cache.layers)):
        keys = torch.cat([torch.nn.functional.pad(old.keys, (0, 0, grow, 0)), new.keys])[..., lead:, :]
        values = torch.cat([torch.nn.functional.pad(old.values, (0, 0, grow, 0)), new.values])[..., lead:, :]
        merged.update(keys, values, layer)
    return input_ids[:, lead:], attention[:, lead:], merged


def generate_rows(model, tokenizer, requests: list[RowRequest], batch_size: int = 16, precision: str = "auto",
                  show_progress: bool = False, more: Callable[[int], list[RowRequest]] | None = None,
                  on_result: Callable[[int, RowResult], None] | None = None,
                  max_cache_bytes: int | Literal["auto"] | None = "auto") -> list[RowResult]:
    """The one generation path (generate, chat, eval, probe, serve): batched, left-padded, KV-cached.

    Requests are taken longest prompt first, `batch_size` rows at a time, fewer where the batch's KV cache would
    exceed `max_cache_bytes` ("auto": `default_cache_bytes`; None: no cap; see `rows_that_fit`); each row keeps its
    own stop strings, token limit, sampling settings, seed, adapter, constraint and streaming callback. The batch
    runs as `generate` calls of DROP_FINISHED_EVERY tokens, each continuing from the KV cache; between calls the rows
    that have ended leave it, and the next batch starts when it is empty.

    Serving (continuous batching): `more(free)` is asked between calls, while places are free, for up to `free`
    requests that arrived in the meantime; they join the running batch in the places of rows that have ended
    (`_join`), in arrival order, and take the indices after `requests`. `on_result(index, result)` is called as
    each row ends, so a short request is answered without waiting for a long one. Virtual-token methods and models
    with special cache layers take arrivals only between batches. Returns every result, in index order.

    A request's `continuation` (eval's reference answer) is scored in the forward that prefills its prompt (`_prefill`),
    its loss returned in the result; the answer is generated as without it.

    Why the list itself is not generated that way: measured on the eval's 50 few-shot prompts (SmolLM2-135M, batch
    25, 2 threads), letting waiting prompts join took 162-164 s against 160 s for fixed batches, at 7.7-9.0 GB peak
    RSS against 4.1. It saves decoding steps (544 against 672), but on a CPU a step costs in proportion to its rows
    (attention over the cache is memory bound: 0.07 s for 1 row, 0.27 s for 25 at ~1,000 positions), so the steps
    saved are the cheap ones, and the joins' prefills in small groups cost as much again (docs/benchmarks.md).
    """
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    class Processor(LogitsProcessor):
        def __init__(self, rows: _Rows):
            self.rows = rows

        def __call__(self, input_ids, scores):
            return self.rows.process(input_ids, scores)

    class Stopper(StoppingCriteria):
        def __init__(self, rows: _Rows):
            self.rows = rows

        def __call__(self, input_ids, scores, **kwargs):
            return self.rows.step(input_ids, scores)

    # Longest prompts first: rows that start together have similar widths (little padding).
    requests = list(requests)
    waiting = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids))
    waiting.reverse()  # popped from the end
    device = next(model.parameters()).device
    mode = resolve_precision(precision, device)
    pad_id = tokenizer.pad_token_id
    stops = stop_token_ids(model, tokenizer)
    adapters: set[str] = set()

    def check_adapters(new: list[RowRequest]) -> None:
        adapters.update(r.adapter for r in new if r.adapter is not None)
        if adapters and not hasattr(model, "peft_config"):
            raise TunesmithError(f"adapters {sorted(adapters)} asked for, but the model has none loaded")

    check_adapters(requests)
    if max_cache_bytes == "auto":
        max_cache_bytes = default_cache_bytes(model)
    peft_config = getattr(model, "active_peft_config", None)
    continuous = more is not None and not (peft_config is not None and peft_config.is_prompt_learning) \
        and _new_cache(model) is not None
    rows = _Rows(requests, tokenizer, stops, device)
    hooks = dict(logits_processor=LogitsProcessorList([Processor(rows)]),
                 stopping_criteria=StoppingCriteriaList([Stopper(rows)]))
    results: list[RowResult | None] = [None] * len(requests)
    progress = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show_progress)

    def row_adapters(active: list[int]) -> dict:  # per-row adapters (peft); a row without one keeps the active one
        return {"adapter_names": [requests[r].adapter or model.active_adapter for r in active]} if adapters else {}

    with progress, torch.inference_mode(), autocast(mode, device):
        task = progress.add_task("generate", total=len(requests))
        generator, input_ids, attention, extra = model, None, None, {}
        while True:
            free = batch_size - len(rows.active)
            if more is not None and free > len(waiting) and (continuous or not rows.active):
                arrived = more(free - len(waiting))
                if arrived:
                    check_adapters(arrived)
                    first = len(requests)
                    requests += arrived
                    rows.add(arrived)
                    results += [None] * len(arrived)
                    waiting[:0] = range(first + len(arrived) - 1, first - 1, -1)  # after those already waiting
                    progress.update(task, total=len(requests))
            if not waiting and not rows.active:
                break
            if waiting and not rows.active:  # a new batch: prefilled a few rows at a time, or by `generate`
                take = rows_that_fit(model, [requests[r] for r in reversed(waiting)], min(free, len(waiting)),
                                     max_cache_bytes)
                rows.active = [waiting.pop() for _ in range(take)]
                input_ids, attention = _left_padded([requests[r] for r in rows.active],
                                                    max(len(requests[r].prompt_ids) for r in rows.active), pad_id)
                extra = row_adapters(rows.active)
                generator, input_ids, attention = _with_virtual_prompt(model, input_ids.to(device),
                                                                       attention.to(device), pad_id, extra)
                if _kv() not in extra:
                    continuations = [(requests[r].continuation, requests[r].scored or [True] * len(requests[r].continuation))
                                     for r in rows.active]
                    cache, scores = _prefill(generator, input_ids, attention, extra, continuations=continuations)
                    for r, score in zip(rows.active, scores):
                        rows.scores[r] = score
                    cache = _new_cache(generator) if cache is None else cache
                    if cache is not None:
                        extra[_kv()] = cache
            elif waiting and free > 0 and continuous:  # arrivals take the places of rows that have ended
                joining = [waiting.pop() for _ in range(min(free, len(waiting)))]
                joined = _join(generator, input_ids, attention, extra[_kv()], [requests[r] for r in joining],
                               pad_id, row_adapters(joining))
                if joined is None:  # their cache cannot be merged: they wait for the next batch
                    waiting.extend(reversed(joining))
                    continuous = False
                else:
                    input_ids, attention, extra[_kv()] = joined
                    rows.active += joining
                    extra.update(row_adapters(rows.active))
            left = max(requests[r].max_new_tokens - len(rows.tokens[r]) for r in rows.active)
            out = generator.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=min(left, DROP_FINISHED_EVERY),
                do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stops, pad_token_id=pad_id,
                return_dict_in_generate=True, **hooks, **extra)
            new = out.sequences.shape[1] - input_ids.shape[1]
            input_ids = out.sequences
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], new))], dim=1)
            extra.pop("inputs_embeds", None)  # the virtual prompt is in the cache now
            extra[_kv()] = getattr(out, _kv())
            keep = rows.unfinished()
            for i, r in enumerate(rows.active):
                if i not in keep:
                    score = rows.scores[r]
                    results[r] = RowResult(rows.text[r], rows.finish[r] or "length", len(requests[r].prompt_ids),
                                           len(rows.tokens[r]), *(score or (None, 0)))
                    if on_result is not None:
                        on_result(r, results[r])
            progress.advance(task, len(rows.active) - len(keep))
            if len(keep) < len(rows.active):
                # A row that has ended leaves the batch (its KV cache rows dropped): the rest no longer pay for it at
                # every step, as they would in one `generate` call to the longest row.
                if keep:
                    index = torch.tensor(keep, device=input_ids.device)
                    input_ids, attention = input_ids[index], attention[index]
                    extra[_kv()].batch_select_indices(index)
                rows.active = [rows.active[i] for i in keep]
                extra.update(row_adapters(rows.active))
            if not rows.active:
                extra = {}
    return results  # type: ignore[return-value]


def encode_chat(tokenizer, conversation: list[Message]) -> list[int]:
    """Token ids of a conversation rendered for generation (the training template, assistant header last)."""
    return tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"]


def chat_requests(tokenizer, conversations: list[list[Message]], max_new_tokens: int = 256, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0, stop: list[str] | None = None,
                  constraint: Callable[[], TokenConstraint] | None = None, stop_loops: int = 0) -> list[RowRequest]:
    """One RowRequest per conversation, as `generate_chat` asks them (row i samples with seed + i)."""
    return [RowRequest(encode_chat(tokenizer, c), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       seed=seed + i, stop=list(stop or []), constraint=constraint() if constraint else None,
                       stop_loops=stop_loops)
            for i, c in enumerate(conversations)]


def generate_chat(model, tokenizer, conversations: list[list[Message]], max_new_tokens: int = 256,
                  batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                  precision: str = "auto", show_progress: bool = True, stop: list[str] | None = None,
                  constraint: Callable[[], TokenConstraint] | None = None, stop_loops: int = 0) -> list[str]:
    """Generate one assistant reply per conversation, in input order.

    `constraint` makes a fresh TokenConstraint per row (e.g. a grammar: tunesmith.guardrails.structured).
    Sampling: row i uses seed + i, so its answer does not depend on how the rows are batched.
    """
    requests = chat_requests(tokenizer, conversations, max_new_tokens, temperature, top_p, seed, stop, constraint,
                             stop_loops)
    results = generate_rows(model, tokenizer, requests, batch_size=batch_size, precision=precision,
                            show_progress=show_progress)
    return [r.text.strip() for r in results]


def cut_off_warning(tokenizer, references: list[str], max_new_tokens: int, setting: str) -> str | None:
    """Why some answers cannot be right, when references are longer than the generation limit; else None.

    A reference the limit cuts short can never be matched: the score would silently undercount (it did on
    DBLP-QuAD, whose NEGATION queries run to 322 tokens, against a limit of 176 chosen on six of its ten types).
    """
    lengths = [len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]] if references else []
    over = [n for n in lengths if n >= max_new_tokens]  # the end-of-turn token needs one more
    if not over:
        return None
    return (f"{setting}={max_new_tokens} is shorter than {len(over)} of {len(lengths)} references (the longest has "
            f"{max(over)} tokens): their answers will be cut off and scored wrong; set {setting} to at least "
            f"{max(over) + 1}")


def loop_stop_warning(tokenizer, references: list[str], stop_loops: int, setting: str) -> str | None:
    """Why `stop_loops` would cut right answers short, when some references are loops by its rule; else None."""
    if not stop_loops or not references:
        return None
    looped = [i for i, ids in enumerate(tokenizer(references, add_special_tokens=False)["input_ids"])
              if LoopDetector.fires_on(ids, stop_loops)]
    if not looped:
        return None
    return (f"{setting}={stop_loops} would stop {len(looped)} of {len(references)} references before their end (the "
            f"first: item {looped[0] + 1}): answers like them would be cut short and scored wrong; raise {setting} "
            f"or set it to 0")


def read_prompts(path: str | Path) -> list[list[Message]]:
    """Prompts from a file: JSONL rows with `messages` (a final assistant turn, the reference, is dropped) or
    `prompt`; any other file holds one prompt per non-blank line. Every bad row is reported at once."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        lines = read_text(path).splitlines()
        return [[{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    conversations: list[list[Message]] = []
    issues: list[DataIssue] = []
    for where, row in iter_jsonl(path):
        if isinstance(row, DataIssue):
            issues.append(row)
        elif "messages" in row or "conversations" in row:
            messages = parse_messages(row, where)
            if isinstance(messages, DataIssue):
                issues.append(messages)
            else:
                conversations.append(messages[:-1] if messages[-1]["role"] == "assistant" else messages)
        elif isinstance(row.get("prompt"), str):
            conversations.append([{"role": "user", "content": row["prompt"]}])
        else:
            issues.append(DataIssue(where, f"expected `messages` (a chat) or `prompt` (a string); fields {sorted(row)}"))
    if issues:
        raise DataError(issues, hint="Each line needs `messages` or `prompt`.")
    return conversations


GuardrailsOpt = Annotated[Optional[Path], typer.Option(
    help="A guardrails YAML: input/output rails and structured output (docs/guardrails.md)", show_default=False)]


def load_guard(path: Path | None, model, tokenizer):
    """The Guard of a guardrails YAML for this model, or None without one."""
    if path is None:
        return None
    from tunesmith.guardrails import Guard, load_guardrails

    return Guard(load_guardrails(path), tokenizer, model.config.vocab_size)


def generate_command(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder (base model + its adapter)")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder (default: the embedded SmolLM2)")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A user message (repeatable)")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Prompts: JSONL (messages or prompt) or one per line")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt for every prompt")] = None,
    max_new_tokens: int = 256, batch_size: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32")] = "auto",
    guardrails: GuardrailsOpt = None, threads: ThreadsOpt = None,
):
    """Answer prompts with a base model or a trained run (batched; greedy unless --temperature > 0); JSONL on stdout.

    With --guardrails each line also says whether the rails refused (`blocked`) and what they decided (`rails`)."""
    conversations = [[{"role": "user", "content": p}] for p in prompt or []]
    if input:
        conversations += read_prompts(input)
    if not conversations:
        raise TunesmithError("nothing to answer: give --prompt TEXT or --input FILE")
    if system:
        conversations = [[{"role": "system", "content": system}] + c for c in conversations]
    use_threads(threads, register="generate")
    model_obj, tokenizer = load_for_inference(run, model, precision=precision)
    prefixes = run_data_config(run).iri_prefixes if run else {}  # the IRIs as the run read and wrote them
    settings = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature, top_p=top_p,
                    seed=seed, precision=precision)
    guard = load_guard(guardrails, model_obj, tokenizer)
    if guard is None:
        compacted = [compact_messages(c, prefixes) for c in conversations]
        lines = [{"answer": expand(a, prefixes)} for a in generate_chat(model_obj, tokenizer, compacted, **settings)]
    else:
        from tunesmith.guardrails import generate_guarded

        lines = [{"answer": out.text, "blocked": out.blocked, "rails": [d.to_dict() for d in out.decisions]}
                 for out in generate_guarded(model_obj, tokenizer, guard, conversations, iri_prefixes=prefixes,
                                             **settings)]
    for conv, line in zip(conversations, lines):
        print(json.dumps({"prompt": conv[-1]["content"], **line}, ensure_ascii=False))


def chat_command(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder")] = None,
    system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
    guardrails: GuardrailsOpt = None, threads: ThreadsOpt = None,
):
    """Talk to a model in the terminal; the conversation is kept; an empty line or Ctrl-D ends it."""
    use_threads(threads, register="chat")
    model_obj, tokenizer = load_for_inference(run, model, precision="auto")
    prefixes = run_data_config(run).iri_prefixes if run else {}
    guard = load_guard(guardrails, model_obj, tokenizer)
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})  # kept as written; the model reads it compacted
        if guard is None:
            reply = expand(generate_chat(model_obj, tokenizer, [compact_messages(history, prefixes)],
                                         max_new_tokens=max_new_tokens, temperature=temperature,
                                         show_progress=False)[0], prefixes)
        else:
            from tunesmith.guardrails import generate_guarded

            reply = generate_guarded(model_obj, tokenizer, guard, [history], max_new_tokens=max_new_tokens,
                                     temperature=temperature, show_progress=False, iri_prefixes=prefixes)[0].text
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")
