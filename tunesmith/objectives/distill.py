"""Knowledge distillation: the student learns the labels and the teacher's next-token distribution
(loss = α·CE + (1 − α)·τ²·D(teacher ‖ student) at trained positions: tunesmith/train/distill_loss.py).

The teacher is a tunesmith run folder (its adapter merged in memory where the method merges) or a model (local
folder, embedded name). Two ways to get its distribution:
- online: the teacher runs forward on every micro-batch (no grad, bf16 autocast where the hardware has it); exact,
  full vocabulary; one teacher forward per student forward.
- offline: the teacher's top-k log-probabilities at every trained position are computed once per (data, teacher,
  k, τ, vocabulary) and stored next to the data in safetensors (`TopKStore`, named and checked by that
  fingerprint); later runs read them. Student and teacher are then compared over k + 1 buckets: the teacher's top-k
  ids plus one tail bucket holding the rest of the mass (`distill_loss.bucketed` says why).

Teacher and student must share the tokenizer (distributions are compared id by id). Across tokenizers, sequence-level
distillation is the way: `tunesmith data relabel` has the teacher write the answers, and the student trains on them
with the ordinary causal_lm objective (docs/distillation.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr

from tunesmith.methods.base import Task
from tunesmith.models.loading import model_fingerprint
from tunesmith.objectives.base import Objective, ObjectiveSettings, register
from tunesmith.records import IGNORE_INDEX, TunesmithError

LINEAGE_FILE = "distillation.json"
STORE_FORMAT = "tunesmith-teacher-topk/1"
STUDENT_FILE = "student.json"  # written by `tunesmith student` into the model folder it makes


class DistillSettings(ObjectiveSettings):
    name: Literal["distill"] = "distill"
    teacher: str = Field(..., description="The teacher: a tunesmith run folder, or a model (local folder, embedded name)")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the cross-entropy on the labels; 1 − alpha weighs the divergence")
    temperature: float = Field(1.0, gt=0, description="Both distributions are softened by it; the divergence is scaled by its square")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1, description="jsd only: the mixture weight of the teacher (GKD's beta)")
    mode: Literal["online", "offline"] = Field("online", description="Teacher forward in the loop, or top-k precomputed once")
    top_k: int = Field(32, ge=1, description="offline: teacher log-probs kept per trained position (plus one tail bucket)")
    store_dir: str | None = Field(None, description="offline: where the top-k stores go (default: next to each data file)")
    teacher_precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it")

    # What one run loads once and shares between data preparation, training and validation: the teacher and the
    # offline stores (never written to the config).
    _state: dict = PrivateAttr(default_factory=dict)


# ---- segments: the examples of a micro-batch, found again from its tensors ----

def batch_segments(batch) -> list[tuple[bytes, int]]:
    """(key, trained positions) of each example in a micro-batch, in the order of `targets != IGNORE_INDEX`.

    An example is a run of positions starting where the position id is 0 (packed and padded rows alike; a pad tail
    is a run with no trained position and is skipped). The key hashes the example's input ids and targets, so the
    offline store is found by content whatever the batch plan (training, validation, another batch size)."""
    ids, targets, positions = batch.input_ids.cpu(), batch.targets.cpu(), batch.position_ids.cpu()
    out = []
    for r in range(ids.shape[0]):
        starts = (positions[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for a, b in zip(starts, starts[1:]):
            trained = int((targets[r, a:b] != IGNORE_INDEX).sum())
            if trained:
                digest = hashlib.blake2b(ids[r, a:b].numpy().tobytes(), digest_size=16)
                digest.update(targets[r, a:b].numpy().tobytes())
                out.append((digest.digest(), trained))
    return out


# ---- offline: the teacher's top-k, computed once and stored next to the data ----

class TopKStore:
    """Teacher top-k log-probs per trained position, by example key. One safetensors file: `keys` (E, 16) uint8,
    `offsets` (E + 1) int64 into `ids` (N, k) int32 and `logprobs` (N, k) float16, plus metadata (fingerprint of
    data + teacher + k + τ + vocabulary). fp16 log-probs: ~3 significant digits, which moves a KL term by far
    less than one optimizer step does; half the size of fp32 (DBLP-QuAD, k=32: ~40 MB)."""

    def __init__(self, keys: list[bytes], offsets: list[int], ids, logprobs, meta: dict):
        self.index = {k: (offsets[i], offsets[i + 1]) for i, k in enumerate(keys)}
        self.ids, self.logprobs, self.meta = ids, logprobs, meta

    def targets(self, segments: list[tuple[bytes, int]]):
        """(top-k log-probs, their ids) for the trained positions of these examples, in order."""
        import torch

        spans = []
        for key, n in segments:
            span = self.index.get(key)
            if span is None or span[1] - span[0] != n:
                raise TunesmithError(
                    "the offline teacher store has no entry for an example of this batch: the data or its tokenization "
                    "changed since the store was made; run again (a new store is made) or use objective.mode=online")
            spans.append(span)
        index = torch.cat([torch.arange(a, b) for a, b in spans]) if spans else torch.zeros(0, dtype=torch.long)
        return self.logprobs[index].float(), self.ids[index].long()

    def merged(self, other: TopKStore) -> TopKStore:
        import torch

        keys = list(self.index) + [k for k in other.index if k not in self.index]
        parts_ids, parts_lp, offsets = [], [], [0]
        for k in keys:
            source = self if k in self.index else other
            a, b = source.index[k]
            parts_ids.append(source.ids[a:b])
            parts_lp.append(source.logprobs[a:b])
            offsets.append(offsets[-1] + b - a)
        return TopKStore(keys, offsets, torch.cat(parts_ids), torch.cat(parts_lp), self.meta)

    def save(self, path: Path) -> None:
        import torch
        from safetensors.torch import save

        from tunesmith.files import atomic_write_bytes

        keys = list(self.index)
        offsets = [0] + [self.index[k][1] for k in keys]
        assert all(self.index[k][0] == offsets[i] for i, k in enumerate(keys))
        tensors = {"keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8).reshape(len(keys), 16),
                   "offsets": torch.tensor(offsets, dtype=torch.int64),
                   "ids": self.ids.to(torch.int32).contiguous(), "logprobs": self.logprobs.to(torch.float16).contiguous()}
        atomic_write_bytes(path, save(tensors, metadata={k: json.dumps(v) for k, v in self.meta.items()}))

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> TopKStore:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
                tensors = {k: f.get_tensor(k) for k in ("keys", "offsets", "ids", "logprobs")}
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
            raise TunesmithError(f"{path}: not a readable teacher top-k store ({type(e).__name__}: {e}); delete it and run again") from None
        if meta.get("format") != STORE_FORMAT or meta.get("fingerprint") != fingerprint:
            raise TunesmithError(
                f"{path} was made for other data, another teacher or other settings (its fingerprint "
                f"{str(meta.get('fingerprint'))[:12]} is not {fingerprint[:12]}); delete it, or point "
                "objective.store_dir elsewhere, and run again")
        keys = [bytes(row) for row in tensors["keys"].tolist()]
        return cls(keys, tensors["offsets"].tolist(), tensors["ids"], tensors["logprobs"], meta)


def vocabulary_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def store_fingerprint(data_fingerprint: str, settings: DistillSettings, teacher_fp: str, vocab: str) -> str:
    return hashlib.sha256(json.dumps({"format": STORE_FORMAT, "data": data_fingerprint, "teacher": teacher_fp,
                                      "top_k": settings.top_k, "temperature": settings.temperature,
                                      "vocabulary": vocab}, sort_keys=True).encode()).hexdigest()


def store_path(data_path: str, fingerprint: str, settings: DistillSettings) -> Path:
    folder = Path(settings.store_dir) if settings.store_dir else Path(data_path).parent
    return folder / f"{Path(data_path).name}.teacher-top{settings.top_k}-{fingerprint[:12]}.safetensors"


# ---- the teacher, loaded once per run ----

class Teacher:
    """The teacher model, frozen, outside the student's module tree (so neither the optimizer, DDP, checkpoints
    nor `.train()` ever touch it)."""

    def __init__(self, spec: str, device: str, precision: str):
        import torch

        from tunesmith.generate import load_run_or_model
        from tunesmith.models.precision import resolve_precision
        from tunesmith.train.loss import TrainedTokenLoss

        self.spec = spec
        model, self.tokenizer = load_run_or_model(spec, device=device)
        model.requires_grad_(False)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device, "objective.teacher_precision")
        if self.precision == "bf16":
            from tunesmith.models.precision import store_frozen_linear_weights_in

            store_frozen_linear_weights_in(model, torch.bfloat16, untie_output=True)  # frozen: its LM head too
        self.loss = TrainedTokenLoss(model)  # its `logits`: the LM head at trained positions only
        self.vocab_size = self.loss.model.get_output_embeddings().weight.shape[0]

    def log_probs(self, batch, temperature: float):
        """(trained positions, vocab) fp32 teacher log-probabilities at `temperature`."""
        import torch

        from tunesmith.models.precision import autocast

        with torch.no_grad(), autocast(self.precision, self.device):
            logits = self.loss.logits(batch.to(self.device))
        return torch.log_softmax(logits.float() / temperature, -1)


def check_vocabulary(teacher: Teacher, tokenizer=None, student_vocab_size: int | None = None) -> None:
    same_tokens = tokenizer is None or vocabulary_hash(tokenizer) == vocabulary_hash(teacher.tokenizer)
    same_size = student_vocab_size is None or student_vocab_size == teacher.vocab_size
    if not (same_tokens and same_size):
        raise TunesmithError(
            f"the teacher {teacher.spec} and the student do not share a vocabulary (tokenizers "
            f"{'agree' if same_tokens else 'differ'}; output sizes {teacher.vocab_size} and {student_vocab_size or '?'}): "
            "logit distillation compares distributions token id by token id. Use sequence-level distillation instead: "
            "`tunesmith data relabel prep.yaml -i train.jsonl -o train.teacher.jsonl` has the teacher write the answers, "
            "then train the student on them with the causal_lm objective (docs/distillation.md)")


# ---- the objective ----

@register
class Distill(Objective):
    name = "distill"
    config = DistillSettings

    def teacher(self, run_cfg, tokenizer=None) -> Teacher:
        state = run_cfg.objective._state
        if "teacher" not in state:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]Loading the teacher {run_cfg.objective.teacher}[/]")
            state["teacher"] = Teacher(run_cfg.objective.teacher, run_cfg.model.device, run_cfg.objective.teacher_precision)
        if tokenizer is not None:
            check_vocabulary(state["teacher"], tokenizer)
        return state["teacher"]

    def prepare(self, path, run_cfg, tokenizer, label_names=None, require_labels=True):
        from tunesmith.data.dataset import prepare_data

        data = prepare_data(path, run_cfg.data, tokenizer)
        if run_cfg.objective.mode == "online":
            self.teacher(run_cfg, tokenizer)  # a vocabulary mismatch fails here, before the student loads
        else:
            store, file = self.offline_store(path, data, run_cfg, tokenizer)
            state = run_cfg.objective._state
            state["store"] = store if "store" not in state else state["store"].merged(store)
            state.setdefault("store_files", []).append(str(file))
        return data

    def offline_store(self, path: str, data, run_cfg, tokenizer) -> tuple[TopKStore, Path]:
        """The teacher's top-k for `data`: read from its store (the teacher is not even loaded), or computed once
        and stored. The vocabulary is part of the fingerprint: a store was only ever made after the teacher's
        tokenizer was checked against this one."""
        s, state = run_cfg.objective, run_cfg.objective._state
        if not state.get("teacher_fingerprint"):
            state["teacher_fingerprint"] = model_fingerprint(s.teacher)
        fingerprint = store_fingerprint(data.fingerprint(), s, state["teacher_fingerprint"], vocabulary_hash(tokenizer))
        file = store_path(path, fingerprint, s)
        if file.is_file():
            return TopKStore.load(file, fingerprint), file
        teacher = self.teacher(run_cfg, tokenizer)
        store = compute_topk(teacher, data.tokenized, s, run_cfg, {
            "format": STORE_FORMAT, "fingerprint": fingerprint, "teacher": s.teacher,
            "teacher_fingerprint": state["teacher_fingerprint"], "data": str(path), "data_fingerprint": data.fingerprint(),
            "top_k": s.top_k, "temperature": s.temperature})
        file.parent.mkdir(parents=True, exist_ok=True)
        store.save(file)
        return store, file

    def task(self, run_cfg, label_names, model_path: Path, tokenizer) -> Task:
        return Task(model_path=str(model_path))

    def loss_module(self, model, run_cfg):
        from tunesmith.train.loss import causal_lm_of

        s, state = run_cfg.objective, run_cfg.objective._state
        student_vocab = causal_lm_of(model).get_output_embeddings().weight.shape[0]
        if s.mode == "offline" and "store" in state:
            state.pop("teacher", None)  # the stores hold all the run needs of it: free its memory
            store = state["store"]
            module = distill_loss(model, s, lambda batch, _t: store.targets(batch_segments(batch)))
            if s.alpha < 1 and state["store"].ids.numel() and int(state["store"].ids.max()) >= student_vocab:
                raise TunesmithError(f"the offline store of {s.teacher} holds token ids beyond the student's vocabulary "
                                     f"({student_vocab}); use sequence-level distillation (docs/distillation.md)")
        elif s.mode == "offline":
            raise TunesmithError("objective.mode=offline: the teacher's top-k are made when the data is prepared; "
                                 "prepare the data through the objective first")
        else:
            teacher = self.teacher(run_cfg)
            check_vocabulary(teacher, student_vocab_size=student_vocab)
            module = distill_loss(model, s, lambda batch, t: (teacher.log_probs(batch, t), None))
        write_lineage(run_cfg)
        return module

    def evaluate(self, model, data, run_cfg, tokenizer, precision):
        """The plain cross-entropy on the validation labels too: comparable with a causal_lm run's valid loss."""
        from tunesmith.train.loss import dataset_loss

        ce = dataset_loss(model, data.tokenized, pad_id=tokenizer.pad_token_id, batch_size=run_cfg.train.batch_size,
                          row_len=run_cfg.data.max_seq_len, pack=run_cfg.train.pack, precision=precision)
        return {"cross_entropy": round(ce.loss, 6), "perplexity": round(ce.perplexity, 4)}


def distill_loss(model, s: DistillSettings, source):
    from tunesmith.train.distill_loss import DistillLoss

    return DistillLoss(model, alpha=s.alpha, temperature=s.temperature, divergence=s.divergence, beta=s.beta,
                       source=source)


def compute_topk(teacher: Teacher, examples, s: DistillSettings, run_cfg, meta: dict) -> TopKStore:
    """One pass of the teacher over the examples: top-k log-probs (at τ) of each trained position, by example."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from tunesmith.data.batching import iter_batches

    batches = list(iter_batches(examples, batch_size=run_cfg.train.batch_size, row_len=run_cfg.data.max_seq_len,
                                pack=run_cfg.train.pack, pad_id=teacher.tokenizer.pad_token_id))
    keys, offsets, ids, logprobs = [], [0], [], []
    seen: set[bytes] = set()
    progress = Progress(TextColumn("[bold]teacher top-k"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=_console())
    with progress:
        task = progress.add_task("teacher", total=len(batches))
        for batch in batches:
            values, top = teacher.log_probs(batch, s.temperature).topk(min(s.top_k, teacher.vocab_size), -1)
            start = 0
            for key, n in batch_segments(batch):
                if key not in seen:  # the same example twice (a duplicated row) is stored once
                    seen.add(key)
                    keys.append(key)
                    ids.append(top[start:start + n].to(torch.int32).cpu())
                    logprobs.append(values[start:start + n].to(torch.float16).cpu())
                    offsets.append(offsets[-1] + n)
                start += n
            progress.advance(task)
    k = min(s.top_k, teacher.vocab_size)
    return TopKStore(keys, offsets, torch.cat(ids) if ids else torch.zeros(0, k, dtype=torch.int32),
                     torch.cat(logprobs) if logprobs else torch.zeros(0, k, dtype=torch.float16), meta)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def write_lineage(run_cfg) -> None:
    """RUN/distillation.json: the teacher (and its fingerprint where computed), where the student came from, the
    objective's settings and the offline stores."""
    from tunesmith.files import atomic_write_json, read_json
    from tunesmith.generate import is_run_folder
    from tunesmith.models.loading import resolve_model

    s, state = run_cfg.objective, run_cfg.objective._state
    if not state.get("teacher_fingerprint"):  # which teacher exactly, even if its folder is later retrained in place
        state["teacher_fingerprint"] = model_fingerprint(s.teacher)
    origin = None
    try:
        student_file = resolve_model(run_cfg.model.name) / STUDENT_FILE
        origin = read_json(student_file) if student_file.is_file() else None
    except TunesmithError:
        pass
    run_dir = Path(run_cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / LINEAGE_FILE, {
        "kind": "logit distillation", "teacher": s.teacher, "teacher_is_run": is_run_folder(s.teacher),
        "teacher_fingerprint": state.get("teacher_fingerprint"), "student": run_cfg.model.name,
        "student_origin": origin, "objective": s.model_dump(mode="json"),
        "offline_stores": state.get("store_files", [])})
