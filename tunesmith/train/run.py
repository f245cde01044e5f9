"""`tunesmith train`: setup → run → save, top to bottom.

The loop is our own (on accelerate, which provides DDP/FSDP/DeepSpeed) because the numerically critical parts must
be exact and tested: loss normalised by the number of trained tokens across all micro-batches of an optimizer step
(and all processes), packed batches, and bit-exact resume. What happens after a step (logging, the generation
probe, checkpoints, early stop) are small hooks, each in one place, called in order.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.cli import RequiredConfigArg, SetOpt, ThreadsOpt
from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.data.batching import MicroBatch, collate, plan_epoch
from tunesmith.data.dataset import PreparedData
from tunesmith.files import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_text
from tunesmith.methods.base import Method, Task, count_parameters, get_method
from tunesmith.models.loading import load_tokenizer, pick_device, resolve_model
from tunesmith.models.packed_attention import use_packed_attention
from tunesmith.models.precision import autocast, resolve_precision, store_frozen_linear_weights_in
from tunesmith.objectives.base import Objective, get_objective
from tunesmith.records import TokenizedExample, TunesmithError
from tunesmith.train.checkpoint import (
    latest_checkpoint, list_checkpoints, load_checkpoint, read_state, remove_unfinished, save_checkpoint,
)
from tunesmith.train.loss import dataset_loss
from tunesmith.threads import LAUNCHED_ENV, bound_kernel_caches, use_threads
from tunesmith.train.tracking import MetricsLog

console = Console(stderr=True)


@dataclass
class TrainResult:
    run_dir: str
    output_dir: str
    steps: int
    final_loss: float
    valid_loss: float | None
    trained_tokens: int
    tokens: int
    train_seconds: float
    trained_tokens_per_second: float
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    peak_rss_mb: float
    final_step: int | None = None  # the step the final output comes from (probe.restore_best: the best probed one)


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    if cfg.stages:
        from tunesmith.train.stages import train_stages

        return train_stages(cfg, resume)
    with _removed_if_setup_fails(Path(cfg.output.dir)):
        run = setup(cfg, resume)
    hooks: list[Hook] = [LogMetrics(run), RunProbe(run)]
    hooks.append(SaveCheckpoints(run, hooks))
    start = restore(run, hooks) if resume else 0
    run.metrics = MetricsLog(run.run_dir, resume_step=start) if run.is_main else None
    last = run_steps(run, hooks, start)
    return save(run, last)


# ---- setup: data first (fails fast, before the model is loaded), then model and optimizer ----

@dataclass
class Run:
    """Everything one training run holds while it runs."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Any
    precision: str  # "bf16" (autocast) or "fp32"
    tokenizer: Any
    method: Method
    objective: Objective
    task: Task
    model: torch.nn.Module
    loss_module: torch.nn.Module  # the model wrapped by the loss (and by accelerate/DDP)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_data: PreparedData
    valid_data: PreparedData | None
    stream: list[list[list[int]]]  # every micro-batch of the run, in order, for this process
    total_steps: int
    trainable: int
    total: int
    train_seconds_before: float = 0.0  # the run's counters at the checkpoint a resumed run starts at
    tokens_before: int = 0
    trained_before: int = 0
    fingerprints: dict[str, str | None] | None = None  # of the tokenized data, computed once (data_fingerprints)
    metrics: MetricsLog | None = None  # metrics.jsonl + TensorBoard (main process only)
    started: float = 0.0  # perf_counter() when the first step of this process began
    best_step: int | None = None  # the step of the model in run/best (the generation probe's best so far)
    loop_seconds: float = 0.0  # how long the step loop ran in this process

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def setup(cfg: RunConfig, resume: bool) -> Run:
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, set_seed
    from transformers import get_scheduler

    bound_kernel_caches()  # before the first matmul, for callers that train in-process (the CLI has done it already)
    device = pick_device(cfg.model.device)
    precision = resolve_precision(cfg.train.precision, device, "train.precision")
    # several processes (tunesmith/train/launch.py, or the user's own torchrun): gloo on CPU, NCCL on CUDA
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=device.type == "cpu", kwargs_handlers=[
        InitProcessGroupKwargs(backend="gloo" if device.type == "cpu" else "nccl")] if several else None)
    run_dir = _open_run_dir(cfg, resume, accelerator.is_main_process)
    device = accelerator.device  # this rank's device (cuda:LOCAL_RANK under torchrun)
    set_seed(cfg.train.seed)
    model_path = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(model_path)
    objective = get_objective(cfg.objective.name)
    train_data = objective.prepare(cfg.data.train, cfg, tokenizer)
    valid_data = objective.prepare(cfg.data.valid, cfg, tokenizer, train_data.label_names) if cfg.data.valid else None
    if accelerator.is_main_process:  # only rank 0 writes files
        _write_run_files(run_dir, cfg, train_data, valid_data)
    stream = micro_batch_stream(train_data.tokenized, cfg, accelerator.process_index, accelerator.num_processes)
    total_steps = len(stream) // cfg.train.grad_accum
    if total_steps == 0:
        raise TunesmithError(f"{len(stream)} micro-batches cannot fill one step of grad_accum={cfg.train.grad_accum}; "
                             "lower train.grad_accum or train.batch_size")

    method = get_method(cfg.method.name)
    task = objective.task(cfg, train_data.label_names, model_path, tokenizer)
    model = method.apply(method.load_base(model_path, cfg.method, str(device), task), cfg.method, task)
    if cfg.train.pack and any(getattr(m, "is_causal", None) is False for m in model.modules()):
        raise TunesmithError(f"{model_path.name} attends in both directions (an encoder): packed examples would see each "
                             "other; set train.pack: false")
    model.config.use_cache = False
    if cfg.train.pack:
        use_packed_attention(model)  # on a CPU each packed example attends within itself, not under a row's mask
    if precision == "bf16":
        store_frozen_linear_weights_in(model, torch.bfloat16)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                  fused=device.type in ("cpu", "cuda"))
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.train.schedule == "constant" else cfg.train.schedule, optimizer,
        num_warmup_steps=round(cfg.train.warmup_ratio * total_steps), num_training_steps=total_steps)
    loss_module, optimizer = accelerator.prepare(objective.loss_module(model, cfg), optimizer)
    if accelerator.is_main_process:
        console.print(
            f"[bold]{cfg.method.name}[/] ({cfg.objective.name}) on {model_path.name}: {trainable:,} of {total:,} parameters "
            f"train ({100 * trainable / total:.2f}%), {device.type}, precision "
            f"{'bf16 autocast' if precision == 'bf16' else 'fp32'}"
            + (" (this CPU has no native bf16)" if precision == "fp32" and cfg.train.precision == "auto"
               and device.type == "cpu" else "")
            + f"; {len(train_data.tokenized)} sequences, {total_steps} "
            f"steps of {cfg.train.grad_accum} micro-batch(es)"
            + (f" on each of {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""))
    return Run(cfg, run_dir, accelerator, precision, tokenizer, method, objective, task, model, loss_module, optimizer,
               scheduler, train_data, valid_data, stream, total_steps, trainable, total)


def _open_run_dir(cfg: RunConfig, resume: bool, is_main: bool = True) -> Path:
    """Check output.dir against the command (nothing is written before the data is validated); clear what writes
    cut short by a crash left there (rank 0 only: another rank must not remove a file rank 0 is writing)."""
    run_dir = Path(cfg.output.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TunesmithError(f"output.dir {run_dir} is a file, not a folder; choose another output.dir")
    saved = run_dir / "config.yaml"
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not resume and (checkpoints or any((run_dir / d).is_dir() for d in ("final", "stages"))):
        raise TunesmithError(f"{run_dir} holds a run already: pass --resume to continue it, or choose another output.dir")
    if resume and saved.is_file() and read_text(saved) != dump_config(cfg):
        raise TunesmithError(f"--resume needs the same config as the interrupted run; compare with {saved}")
    if resume and not checkpoints and is_main:
        console.print(f"[yellow]--resume[/]: {run_dir / 'checkpoints'} holds no checkpoint yet (the run stopped before "
                      "its first one, or train.save_every is not set); training starts at step 0")
    if is_main:
        remove_unfinished(run_dir)
        remove_unfinished(run_dir / "checkpoints")
    return run_dir


@contextmanager
def _removed_if_setup_fails(run_dir: Path):
    """A run that fails before training starts (bad data, model not found) leaves no output folder behind."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def micro_batch_stream(examples: list[TokenizedExample], cfg: RunConfig, rank: int = 0, world: int = 1) -> list[list[list[int]]]:
    """All micro-batches of the run, in order, for this process. Deterministic: resume replays it exactly."""
    lengths = [len(e) for e in examples]
    t = cfg.train
    stream: list[list[list[int]]] = []
    for epoch in range(max(1, math.ceil(t.epochs))):
        stream += plan_epoch(lengths, seed=t.seed, epoch=epoch, batch_size=t.batch_size,
                             row_len=cfg.data.max_seq_len, pack=t.pack)
    per_epoch = len(stream) / max(1, math.ceil(t.epochs))
    stream = stream[: max(1, round(per_epoch * t.epochs))]
    if t.max_steps is not None:
        needed = t.max_steps * t.grad_accum * world
        stream = (stream * math.ceil(needed / len(stream)))[:needed]
    per_rank = len(stream) // world  # equal counts per process, or DDP waits forever on the longest
    return stream[rank::world][:per_rank]


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _write_run_files(run_dir: Path, cfg: RunConfig, train: PreparedData, valid: PreparedData | None) -> None:
    """The resolved config and the data report, written once the data is known to be good."""
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_json(run_dir / "data_report.json", {"train": train.summary(), "valid": valid.summary() if valid else None})
    skipped = train.skipped + (valid.skipped if valid else [])
    if skipped:
        atomic_write_jsonl(run_dir / "bad_rows.jsonl", [{"where": str(i.source), "reason": i.reason} for i in skipped])
        console.print(f"[yellow]Skipped {len(skipped)} bad row(s)[/]; listed in {run_dir / 'bad_rows.jsonl'}")
    s = train.summary()
    console.print(f"Data: {s['examples']} examples, {s['tokens']:,} tokens, {100 * s['trained_fraction']:.1f}% trained"
                  + (f", {s['truncated']} truncated" if s["truncated"] else "")
                  + (f", {s['dropped_too_long']} dropped as too long" if s["dropped_too_long"] else ""))


# ---- run ----

@dataclass
class StepStats:
    """What one optimizer step did, and the running totals of the run so far."""

    done: int  # optimizer steps completed, this one included
    loss: float  # mean loss per trained token of this step
    loss_sum: float
    trained: int  # trained tokens of this step (this process)
    tokens: int  # tokens of this step, padding included (this process)
    grad_norm: float
    tokens_seen: int = 0  # totals of the run so far (a resumed run: the counters of its checkpoint included)
    trained_seen: int = 0
    seconds: float = 0.0  # training time of the run so far


class Hook:
    """Runs after every optimizer step; `after_step` returns True to stop training early. A hook with state
    that a resumed run needs gives it in `state_dict` (stored in each checkpoint under the hook's `name`)."""

    name = ""

    def after_step(self, stats: StepStats) -> bool:
        return False

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def data_fingerprints(run: Run) -> dict[str, str | None]:
    """What the run trains and validates on, as hashes of the tokenized examples (resume checks them)."""
    if run.fingerprints is None:
        run.fingerprints = {"train": run.train_data.fingerprint(),
                            "valid": run.valid_data.fingerprint() if run.valid_data else None}
    return run.fingerprints


def restore(run: Run, hooks: list[Hook]) -> int:
    """Continue from the last checkpoint: weights, optimizer, scheduler, RNGs, counters and hook state, after
    checking that the data is what the run trained on. Returns its step."""
    last = latest_checkpoint(run.ckpt_dir)
    if last is None:
        return 0
    saved = read_state(last).get("data") or {}
    now = data_fingerprints(run)
    for split, path, what in (("train", run.cfg.data.train, "training"), ("valid", run.cfg.data.valid, "validation")):
        if split in saved and saved[split] != now[split]:
            raise TunesmithError(
                f"--resume: the {what} data changed since {last} was saved ({path}: its examples are not those the run "
                f"{'trained on' if split == 'train' else 'was validated on'}). Resuming would continue with another "
                "batch stream. Put the original data back, or start a new run (another output.dir).")
    processes = read_state(last).get("processes", 1)
    if processes != run.accelerator.num_processes:
        raise TunesmithError(
            f"--resume: {last} was written by a run of {processes} process(es), this one has "
            f"{run.accelerator.num_processes}; each process trains its own share of the batch stream, so resume with "
            f"the same number (--nproc x --nnodes = {processes})")
    state = load_checkpoint(last, run.model, run.optimizer, run.scheduler)
    counters = state.get("counters", {})
    run.train_seconds_before = counters.get("train_seconds", 0.0)
    run.tokens_before, run.trained_before = counters.get("tokens", 0), counters.get("trained_tokens", 0)
    for hook in hooks:
        if hook.name and state.get(hook.name):
            hook.load_state_dict(state[hook.name])
    if run.is_main:
        console.print(f"[bold]Resuming[/] from {last} (step {state['step']}/{run.total_steps})")
    return state["step"]


def accumulate_gradients(loss_module, window: list[MicroBatch], accelerator, precision: str = "fp32") -> tuple[float, int]:
    """Backward over one optimizer step's micro-batches; returns (summed loss, trained tokens) of this process.

    The loss is normalised by the trained tokens of the whole step, across micro-batches and processes, so
    batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same gradient (a mean of per-micro-batch
    means would weight the tokens of short micro-batches more). DDP averages gradients over processes,
    hence the factor `world`.
    """
    world = accelerator.num_processes
    local_tokens = sum(b.n_trained for b in window)
    step_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum")
    summed = 0.0
    for j, batch in enumerate(window):
        sync = nullcontext() if j == len(window) - 1 else accelerator.no_sync(loss_module)
        with sync, autocast(precision, accelerator.device):
            loss_sum, _ = loss_module(batch.to(accelerator.device))
            loss = loss_sum * world / step_tokens
        accelerator.backward(loss)
        summed += loss_sum.item()
    return summed, local_tokens


def optimizer_step(run: Run, step: int) -> StepStats:
    """Micro-batches of step `step` → gradients → clipped → one optimizer and scheduler step."""
    accum = run.cfg.train.grad_accum
    window = [collate(run.train_data.tokenized, rows, run.tokenizer.pad_token_id, run.cfg.train.pack, run.objective.shift)
              for rows in run.stream[step * accum:(step + 1) * accum]]
    loss_sum, trained = accumulate_gradients(run.loss_module, window, run.accelerator, run.precision)
    max_norm = run.cfg.train.max_grad_norm
    grad_norm = float(run.accelerator.clip_grad_norm_(run.model.parameters(), max_norm)) if max_norm else float("nan")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    tokens = sum(b.n_tokens for b in window)
    if run.accelerator.num_processes > 1:  # the step's loss and token counts over every process, as one process sees them
        totals = run.accelerator.reduce(torch.tensor([loss_sum, trained, tokens], dtype=torch.float64,
                                                     device=run.accelerator.device), "sum").tolist()
        loss_sum, trained, tokens = totals[0], round(totals[1]), round(totals[2])
    return StepStats(step + 1, loss_sum / max(trained, 1), loss_sum, trained, tokens, grad_norm)


def run_steps(run: Run, hooks: list[Hook], start: int) -> StepStats | None:
    """Every optimizer step from `start`, with the hooks after each; returns the last step's stats."""
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not run.is_main)
    t0 = run.started = time.perf_counter()
    tokens_seen, trained_seen = run.tokens_before, run.trained_before
    stats = None
    with progress:
        task = progress.add_task("train", total=run.total_steps, completed=start, loss="-", tps="-")
        for step in range(start, run.total_steps):
            stats = optimizer_step(run, step)
            tokens_seen += stats.tokens
            trained_seen += stats.trained
            stats.tokens_seen, stats.trained_seen = tokens_seen, trained_seen
            stats.seconds = run.train_seconds_before + time.perf_counter() - t0
            progress.update(task, completed=stats.done, loss=f"{stats.loss:.3f}", tps=f"{tokens_seen / stats.seconds:,.0f}")
            stop = [hook.after_step(stats) for hook in hooks]  # every hook sees every step, in order
            if any(stop):
                run.total_steps = stats.done
                break
    run.loop_seconds = time.perf_counter() - t0
    return stats


class LogMetrics(Hook):
    """metrics.jsonl + TensorBoard every `train.log_every` steps (and at the last), loss averaged over the window."""

    name = "log"  # a checkpoint inside a window keeps the window's sums

    def __init__(self, run: Run):
        self.run = run
        self.window_loss = self.window_tokens = 0.0

    def after_step(self, stats: StepStats) -> bool:
        run, t = self.run, self.run.cfg.train
        self.window_loss += stats.loss_sum
        self.window_tokens += stats.trained
        if run.metrics and (stats.done % t.log_every == 0 or stats.done == run.total_steps):
            run.metrics.log(stats.done, loss=self.window_loss / max(self.window_tokens, 1), lr=run.scheduler.get_last_lr()[0],
                            grad_norm=stats.grad_norm, tokens_per_second=stats.tokens_seen / stats.seconds,
                            trained_tokens=stats.trained_seen,
                            epoch=stats.done * t.grad_accum / max(len(run.stream) / max(t.epochs, 1e-9), 1))
            self.window_loss = self.window_tokens = 0.0
        return False

    def state_dict(self) -> dict | None:
        return {"window_loss": self.window_loss, "window_tokens": self.window_tokens}

    def load_state_dict(self, state: dict) -> None:
        self.window_loss, self.window_tokens = state["window_loss"], state["window_tokens"]


class RunProbe(Hook):
    """Every `probe.every` steps: generate on validation items, log the scores, keep the best model in run/best,
    and stop early after `probe.patience` probes without improvement (tunesmith/eval/probe.py)."""

    name = "probe"

    def __init__(self, run: Run):
        self.run = run
        self.probe = None
        if run.cfg.probe is not None:
            from tunesmith.eval.probe import GenerationProbe

            self.probe = GenerationProbe(run.cfg.probe, run.valid_data.examples, run.tokenizer, run.cfg.data.iri_prefixes)

    def after_step(self, stats: StepStats) -> bool:
        run, probe = self.run, self.probe
        if probe is None or not (stats.done % run.cfg.probe.every == 0 or stats.done == run.total_steps):
            return False
        stop = False
        if run.is_main:
            started = time.perf_counter()
            scores = probe(run.model, run.tokenizer)
            if run.metrics:
                run.metrics.log(stats.done, **scores)
            is_best, stop = probe.update(stats.done, scores)
            if is_best:
                save_model(run, run.run_dir / "best", run.model)
                run.best_step = stats.done
                atomic_write_json(run.run_dir / "best.json", {
                    "step": stats.done, "metric": probe.cfg.metric, "value": scores[f"probe/{probe.cfg.metric}"]})
            console.print(probe_line(stats.done, scores, probe, is_best, time.perf_counter() - started), soft_wrap=True)
        stop = bool(run.accelerator.reduce(torch.tensor(int(stop), device=run.accelerator.device), "sum").item())
        if stop:
            console.print(f"[yellow]Stopping early[/] at step {stats.done}: no probe improvement in "
                          f"{probe.cfg.patience} probes; best step {probe.state.best_step} is in {run.run_dir / 'best'}")
        return stop

    def state_dict(self) -> dict | None:
        return asdict(self.probe.state) if self.probe else None

    def load_state_dict(self, state: dict) -> None:
        if self.probe is not None:
            from tunesmith.eval.probe import ProbeState

            self.probe.state = ProbeState(**state)
            self.run.best_step = self.probe.state.best_step


def probe_line(step: int, scores: dict[str, float], probe, is_best: bool, seconds: float) -> str:
    """What a probe found, printed above the training bar (which stands still while the probe generates):
    "probe, step 250: SPARQL match 62.0 (best so far), exact match 60.0 · 100 answers in 95 s"."""
    from tunesmith.eval.metrics import display_name

    main = f"probe/{probe.cfg.metric}"
    best = "best so far" if is_best else f"best {probe.state.best:.1f} at step {probe.state.best_step}"
    parts = [f"{display_name(main.removeprefix('probe/'))} {scores[main]:.1f} ({best})"]
    parts += [f"{display_name(k.removeprefix('probe/'))} {v:.1f}" for k, v in scores.items() if k != main]
    return f"[bold]probe[/], step {step}: " + ", ".join(parts) + f" · {len(probe.examples)} answers in {seconds:.0f} s"


class SaveCheckpoints(Hook):
    """Every `train.save_every` steps (not at the last: the final output is saved then): an atomic checkpoint with
    everything a resumed run needs, the other hooks' state included."""

    def __init__(self, run: Run, hooks: list[Hook]):
        self.run = run
        self.hooks = hooks  # whose state goes into each checkpoint

    def after_step(self, stats: StepStats) -> bool:
        run, every = self.run, self.run.cfg.train.save_every
        if every and stats.done % every == 0 and stats.done < run.total_steps:
            run.accelerator.wait_for_everyone()
            if run.is_main:
                if run.metrics:
                    run.metrics.sync()  # the log up to this step survives a power loss, like the checkpoint
                state = {"counters": {"train_seconds": stats.seconds, "tokens": stats.tokens_seen,
                                      "trained_tokens": stats.trained_seen},
                         "data": data_fingerprints(run), "processes": run.accelerator.num_processes}
                state.update({h.name: h.state_dict() for h in self.hooks if h.name})
                save_checkpoint(run.ckpt_dir, stats.done, run.model, run.optimizer, run.scheduler, state,
                                run.cfg.train.keep_last)
        return False


# ---- save ----

def save_model(run: Run, target: Path, model: torch.nn.Module) -> None:
    """What the method trained (peft adapter or model folder), the tokenizer and the objective's labels, as one
    atomic folder."""
    with atomic_dir(target) as folder:
        run.method.save(model, folder)
        run.tokenizer.save_pretrained(folder)
        run.objective.save(folder, run.train_data.label_names)


def save(run: Run, last: StepStats | None) -> TrainResult:
    cfg = run.cfg
    valid_loss, valid_metrics = None, None
    if run.valid_data:
        valid_loss = dataset_loss(run.model, run.valid_data.tokenized, pad_id=run.tokenizer.pad_token_id,
                                  batch_size=cfg.train.batch_size, row_len=cfg.data.max_seq_len, pack=cfg.train.pack,
                                  precision=run.precision, loss_module=run.objective.loss_module(run.model, cfg),
                                  shift=run.objective.shift, progress="valid loss" if run.is_main else None).loss
        valid_metrics = run.objective.evaluate(run.model, run.valid_data, cfg, run.tokenizer, run.precision)
        if valid_metrics and run.is_main:
            atomic_write_json(run.run_dir / "valid_report.json", valid_metrics)
            console.print("Validation: " + ", ".join(f"{k} {v}" for k, v in valid_metrics.items()
                                                       if isinstance(v, float)) + f" ({run.run_dir / 'valid_report.json'})")
    run.accelerator.wait_for_everyone()
    out_dir = run.run_dir / "final"
    final_step = restored_step(run)
    if run.is_main:
        if final_step != run.total_steps:
            with atomic_dir(out_dir) as folder:  # probe.restore_best: the very files the probe saved
                shutil.copytree(run.run_dir / "best", folder, dirs_exist_ok=True)
            console.print(f"probe.restore_best: the final output is the best probed model, step {final_step} of "
                          f"{run.total_steps} (the validation loss below is the last step's)")
        else:
            save_model(run, out_dir, run.accelerator.unwrap_model(run.loss_module).model)
        if cfg.output.merge:
            from tunesmith.export import merge_run

            merge_run(run.run_dir)
    if run.metrics:
        if valid_loss is not None:
            run.metrics.log(run.total_steps, valid_loss=valid_loss,
                            **{f"valid_{k}": v for k, v in (valid_metrics or {}).items() if isinstance(v, float)})
        run.metrics.close()
    # throughput counts saving too, as a user waits for it; a resumed run counts the time before the checkpoint
    elapsed = run.train_seconds_before + time.perf_counter() - run.started
    tokens, trained = (last.tokens_seen, last.trained_seen) if last else (run.tokens_before, run.trained_before)
    final_loss = last.loss if last else float("nan")
    result = TrainResult(
        run_dir=str(run.run_dir), output_dir=str(out_dir), steps=run.total_steps, final_loss=final_loss,
        valid_loss=valid_loss, trained_tokens=trained, tokens=tokens,
        train_seconds=round(run.train_seconds_before + run.loop_seconds, 2),
        trained_tokens_per_second=round(trained / max(elapsed, 1e-9), 1),
        tokens_per_second=round(tokens / max(elapsed, 1e-9), 1),
        trainable_parameters=run.trainable, total_parameters=run.total, peak_rss_mb=round(peak_rss_mb(), 1),
        final_step=final_step)
    if not run.is_main:
        return result
    atomic_write_json(run.run_dir / "train_summary.json", asdict(result))
    console.print(f"[green]Done[/]: {out_dir} (loss {final_loss:.4f}"
                  + (f", valid loss {valid_loss:.4f}" if valid_loss is not None else "")
                  + f"). Next: " + (f"tunesmith generate --run {run.run_dir} --prompt '...'" if run.objective.generates
                                    else f"tunesmith predict --run {run.run_dir} --input FILE"))
    return result


def restored_step(run: Run) -> int:
    """The step whose model becomes the final output: the best probed one with `probe.restore_best`, else the last."""
    probe = run.cfg.probe
    if probe is not None and probe.restore_best and run.best_step is not None and (run.run_dir / "best").is_dir():
        return run.best_step
    return run.total_steps


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_command(config: RequiredConfigArg, overrides: SetOpt = None,
                  resume: Annotated[bool, typer.Option("--resume", help="Continue the run in output.dir from its last checkpoint")] = False,
                  threads: ThreadsOpt = None,
                  nproc: Annotated[int, typer.Option("--nproc", min=1, help="Training processes on this node (torchrun; data parallel: gloo on CPU, NCCL on CUDA)")] = 1,
                  nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines in the job (run the same command on each, with its --node-rank)")] = 1,
                  node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This machine's index, 0 to nnodes-1 (0 hosts the rendezvous)")] = 0,
                  master_addr: Annotated[str, typer.Option("--master-addr", help="Address of node 0, reachable from every node")] = "127.0.0.1",
                  master_port: Annotated[int, typer.Option("--master-port", help="A free TCP port on node 0")] = 29500):
    """Fine-tune a model as the config says (with --nproc/--nnodes: several processes or machines, via torchrun)."""
    from tunesmith.train.launch import Launch, distributed_problems, in_launched_rank, launch_training

    cfg = load_config(config, overrides or [], options={"model.threads": threads})
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port)
    if launch.distributed and not in_launched_rank():
        problems = launch.problems() + distributed_problems(cfg)
        if problems:
            raise TunesmithError("; ".join(problems))
        use_threads(cfg.model.threads, register="train")  # the whole job, once
        args = [str(config), *[a for o in overrides or [] for a in ("--set", o)], *(["--resume"] if resume else [])]
        code = launch_training(launch, args, cfg.model.threads)
        if code:
            raise typer.Exit(code)
        return
    # a rank started by our launcher takes the share of threads it was given; otherwise the setting applies
    use_threads(None if os.environ.get(LAUNCHED_ENV) else cfg.model.threads, register="train")
    train(cfg, resume=resume)
