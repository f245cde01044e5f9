"""`tunesmith export RUN --to hf|peft|gguf|ollama`: a trained run → what other runtimes load, proven to answer alike.

setup (load the run; merge with checks) → run (write the artifact, in a staged folder) → check (parity against
the run's own answers, `parity.json`) → save (rename into place, `export.json` manifest). One function per
format; the table FORMATS is what the CLI offers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.export.hf import DEFAULT_HF_DTYPE, HF_DTYPES, save_hf
from tunesmith.export.parity import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MIN_IDENTICAL, DEFAULT_N, ParityResult
from tunesmith.files import atomic_dir, atomic_write_json, read_json
from tunesmith.cli import ThreadsOpt
from tunesmith.records import TunesmithError
from tunesmith.threads import use_threads

console = Console(stderr=True)


@dataclass
class ExportOptions:
    quant: str | None = None  # format-specific; None = the format's default
    out: Path | None = None
    parity: bool = True
    n: int = DEFAULT_N
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    prompts: Path | None = None
    min_identical: float = DEFAULT_MIN_IDENTICAL
    backend: str = "transformers"  # who answers for a GGUF in the parity check: transformers or llama.cpp
    untie_embeddings: bool = False
    # fp32 on both sides: bf16 activations flip greedy near-ties at random and would hide what the artifact changed
    precision: str = "fp32"


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[Path]
    quant: str | None = None
    parity: list[ParityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def parity_passed(self) -> bool:
        chosen = [p for p in self.parity if p.quant == self.quant] or self.parity
        return all(p.passed for p in chosen[-1:])


class _Checker:
    """Parity prompts and the run's own answers, computed once per export and compared with each artifact."""

    def __init__(self, cfg, reference_model, tokenizer, opts: ExportOptions):
        from tunesmith.export.parity import answers, parity_prompts

        self.opts = opts
        self.prompts = parity_prompts(cfg, opts.n, opts.prompts)
        console.print(f"[dim]parity: the run's own greedy answers on {len(self.prompts.conversations)} prompts "
                      f"from {self.prompts.source}[/]")
        self.reference = answers(reference_model, tokenizer, self.prompts, opts.max_new_tokens, opts.precision)

    def check(self, exported: list[str], artifact: Path, backend: str, quant: str | None, name: str | None = None) -> ParityResult:
        from tunesmith.export.parity import compare

        size = artifact.stat().st_size if artifact.is_file() else sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
        result = compare(self.prompts, self.reference, exported, name or artifact.name, backend, self.opts.min_identical,
                         quant, size)
        console.print(("[green]" if result.passed else "[bold red]") + result.line() + "[/]")
        return result

    def transformers(self, model, tokenizer, artifact: Path, backend: str, quant: str | None,
                     name: str | None = None) -> ParityResult:
        from tunesmith.export.parity import answers

        return self.check(answers(model, tokenizer, self.prompts, self.opts.max_new_tokens, self.opts.precision),
                          artifact, backend, quant, name)

    def gguf(self, path: Path, quant: str) -> ParityResult:
        if self.opts.backend == "llama.cpp":
            from tunesmith.export.llamacpp import answer_with_llamacpp

            exported = answer_with_llamacpp(path, self.prompts.conversations, self.opts.max_new_tokens)
            return self.check(exported, path, "llama.cpp", quant)
        from tunesmith.export.parity import load_gguf_with_transformers

        model, tokenizer = load_gguf_with_transformers(path)
        return self.transformers(model, tokenizer, path, "transformers-gguf", quant)

    def to_json(self, result: ExportResult) -> dict:
        return {"format": result.format, "chosen": result.quant, "prompts": self.prompts.source,
                "max_new_tokens": self.opts.max_new_tokens, "precision": self.opts.precision,
                "min_identical": self.opts.min_identical, "passed": result.parity_passed,
                "results": [p.to_dict() for p in result.parity]}


def _manifest(run: Path, cfg, result: ExportResult, extra: dict | None = None) -> dict:
    return {"format": result.format, "run": str(run), "method": cfg.method.name, "base_model": cfg.model.name,
            "quant": result.quant, "files": sorted(p.name for p in result.files), "notes": result.notes,
            "parity": None if not result.parity else {"passed": result.parity_passed, "file": "parity.json"},
            **(extra or {})}


def _finish(tmp: Path, run: Path, cfg, result: ExportResult, checker: _Checker | None, extra: dict | None = None) -> None:
    if checker is not None:
        atomic_write_json(tmp / "parity.json", checker.to_json(result))
    atomic_write_json(tmp / "export.json", _manifest(run, cfg, result, extra))


# ---- the formats -------------------------------------------------------------------------------------------

def export_hf(run: Path, opts: ExportOptions) -> ExportResult:
    from tunesmith.export.merge import load_trained, merge_checked
    from tunesmith.models.loading import load_model, load_tokenizer

    dtype = opts.quant or DEFAULT_HF_DTYPE
    if dtype not in HF_DTYPES:
        raise TunesmithError(f"--to hf writes safetensors in {', '.join(HF_DTYPES)}; got --quant {dtype}")
    trained = load_trained(run)
    merged = merge_checked(trained, opts.untie_embeddings)
    checker = _Checker(trained.cfg, merged, trained.tokenizer, opts) if opts.parity else None
    out = opts.out or run / "export" / "hf"
    with atomic_dir(out) as tmp:
        save_hf(merged, trained.tokenizer, tmp, dtype)
        result = ExportResult("hf", out, sorted(tmp.iterdir()), dtype)
        result.files = [out / p.name for p in result.files]
        if checker:
            result.parity.append(checker.transformers(load_model(tmp, device="cpu").eval(), load_tokenizer(tmp), tmp,
                                                      "transformers", dtype, out.name))
        _finish(tmp, run, trained.cfg, result, checker, {"tie_word_embeddings": bool(merged.config.tie_word_embeddings),
                                                        "untied_by_export": opts.untie_embeddings})
    return result


def export_peft(run: Path, opts: ExportOptions) -> ExportResult:
    from tunesmith.config import load_config
    from tunesmith.export.peft import adapter_dir, copy_adapter, serving_problems

    if opts.quant not in (None, "f32"):
        raise TunesmithError("--to peft copies the adapter as trained; --quant does not apply")
    source = adapter_dir(run)
    problems, notes = serving_problems(source)
    for line in problems:
        console.print(f"[yellow]not servable by vLLM / Ray Serve LLM:[/] {line}")
    cfg, checker = load_config(run / "config.yaml"), None
    if opts.parity:
        from tunesmith.export.merge import load_trained

        trained = load_trained(run)
        checker = _Checker(cfg, trained.model, trained.tokenizer, opts)
        del trained
    out = opts.out or run / "export" / "peft"
    with atomic_dir(out) as tmp:
        files = copy_adapter(source, tmp)
        result = ExportResult("peft", out, [out / f.name for f in files], None, notes=notes)
        if checker:
            from peft import PeftModel

            from tunesmith.models.loading import load_model, load_tokenizer, resolve_model

            # What a user of the adapter does: plain peft on a fresh base, nothing of tunesmith's method code.
            base = load_model(resolve_model(cfg.model.name), device="cpu")
            exported = PeftModel.from_pretrained(base, tmp).eval()
            result.parity.append(checker.transformers(exported, load_tokenizer(tmp), tmp, "transformers+peft",
                                                      None, out.name))
        peft_type = read_json(source / "adapter_config.json").get("peft_type")
        _finish(tmp, run, cfg, result, checker, {"peft_type": peft_type, "vllm_ray_problems": problems, "vllm_notes": notes})
    return result


def _gguf_levels(quant: str | None, opts: ExportOptions) -> tuple[list[str], bool]:
    from tunesmith.export.gguf import AUTO_LADDER, GGUF_TYPES

    if quant in (None, "auto"):
        if not opts.parity:
            return ["q8_0"], False  # no parity to choose with: the level that kept trained facts in our tests
        return list(AUTO_LADDER), True
    levels = [q.strip().lower() for q in quant.split(",") if q.strip()]
    unknown = [q for q in levels if q not in GGUF_TYPES]
    if unknown:
        raise TunesmithError(f"unknown GGUF quantization {', '.join(unknown)}; choose from auto, {', '.join(GGUF_TYPES)}")
    return levels, len(levels) > 1


def export_gguf(run: Path, opts: ExportOptions, ollama: bool = False) -> ExportResult:
    from tunesmith.export import llamacpp
    from tunesmith.export.gguf import GgufBuilder, gguf_name
    from tunesmith.export.merge import load_trained, merge_checked

    levels, choose = _gguf_levels(opts.quant, opts)
    llamacpp.converter_dir()  # fail before any work if the converter is missing
    trained = load_trained(run)
    cfg = trained.cfg
    merged = merge_checked(trained, opts.untie_embeddings)
    checker = _Checker(cfg, merged, trained.tokenizer, opts) if opts.parity else None
    fmt = "ollama" if ollama else "gguf"
    out = opts.out or run / "export" / fmt
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="tunesmith-gguf-") as work:
        hf_dir = Path(work) / "hf"
        save_hf(merged, trained.tokenizer, hf_dir, "f32")  # full precision in: every GGUF level rounds only once
        builder = GgufBuilder(hf_dir, Path(work))
        result = ExportResult(fmt, out, [])
        chosen = None
        for quant in levels:
            path = builder.build(quant, tmp / gguf_name(quant))
            console.print(f"[dim]wrote {path.name} ({path.stat().st_size / 2**20:.1f} MiB)[/]")
            passed = True
            if checker:
                outcome = checker.gguf(path, quant)
                result.parity.append(outcome)
                passed = outcome.passed
            if passed or quant == levels[-1] or not choose:
                chosen = quant
                break
            path.unlink()  # a level that answers differently is not kept
        result.quant = chosen
        if choose and checker and not result.parity_passed:
            result.notes.append(f"no level passed parity; kept {chosen}, the largest tried")
        files = [tmp / gguf_name(chosen)]
        extra: dict = {"tie_word_embeddings": bool(merged.config.tie_word_embeddings),
                       "untied_by_export": opts.untie_embeddings}
        if ollama:
            from tunesmith.export.ollama import modelfile
            from tunesmith.generate import stop_token_ids

            stops = trained.tokenizer.convert_ids_to_tokens(stop_token_ids(merged, trained.tokenizer))
            (tmp / "Modelfile").write_text(modelfile(gguf_name(chosen), trained.tokenizer, stops, cfg.data.system_prompt))
            files.append(tmp / "Modelfile")
        elif _is_lora(run):
            from tunesmith.models.loading import resolve_model

            adapter = llamacpp.convert_lora(run / "final", resolve_model(cfg.model.name), tmp / "adapter.f16.gguf")
            files.append(adapter)
            extra["adapter"] = {"file": adapter.name, "apply_to": cfg.model.name,
                                "use": f"llama-cli -m BASE.gguf --lora {adapter.name}"}
        result.files = [out / f.name for f in files]
        _finish(tmp, run, cfg, result, checker, extra)
    return result


def _is_lora(run: Path) -> bool:
    config = run / "final" / "adapter_config.json"
    return config.is_file() and read_json(config).get("peft_type") == "LORA"


def export_ollama(run: Path, opts: ExportOptions) -> ExportResult:
    return export_gguf(run, opts, ollama=True)


FORMATS = {"hf": export_hf, "peft": export_peft, "gguf": export_gguf, "ollama": export_ollama}


def export_run(run: str | Path, to: str, opts: ExportOptions | None = None) -> ExportResult:
    from tunesmith.train.stages import last_stage_dir

    run = last_stage_dir(Path(run))  # a multi-stage run exports its last stage
    opts = opts or ExportOptions()
    if to not in FORMATS:
        raise TunesmithError(f"--to must be one of {', '.join(FORMATS)}; got {to!r}")
    if not (run / "config.yaml").is_file():
        raise TunesmithError(f"{run} is not a tunesmith run folder (no config.yaml)")
    from tunesmith.config import load_config
    from tunesmith.objectives.base import get_objective

    objective = load_config(run / "config.yaml").objective.name
    if not get_objective(objective).generates:
        if to not in ("hf", "peft"):
            raise TunesmithError(f"the run trained a {objective} head, which labels text instead of generating it: "
                                 "export it with --to hf (a transformers classifier folder) or --to peft")
        if opts.parity:
            console.print("[dim]parity by generated answers does not apply to a classifier; the merge itself is still "
                          "checked (merged logits == unmerged logits)[/]")
            opts.parity = False
    return FORMATS[to](run, opts)


def merge_run(run: str | Path, out: str | Path | None = None, parity: bool = False) -> Path:
    """The merged model as a transformers folder (`tunesmith merge`, `output.merge: true`)."""
    run = Path(run)
    opts = ExportOptions(out=Path(out) if out else run / "merged", parity=parity)
    return export_run(run, "hf", opts).out


# ---- the verbs ----

def export_command(
    run: Annotated[Path, typer.Argument(help="A trained run folder", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="hf (merged safetensors) | peft (the adapter alone) | gguf | ollama (GGUF + Modelfile)")],
    quant: Annotated[Optional[str], typer.Option(help="hf: bf16|f16|f32. gguf/ollama: auto (the smallest level that passes parity), "
                                                     "f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, or K-quants (q4_k_m ...) with llama-cpp-python; "
                                                     "a comma list is tried in order")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default RUN/export/FORMAT)")] = None,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Compare the artifact's greedy answers with the run's (parity.json)")] = True,
    n: Annotated[int, typer.Option("-n", help="Parity prompts (the first N of data.valid, else of data.train)")] = 32,
    prompts: Annotated[Optional[Path], typer.Option(help="Parity prompts from this data file instead (the run's data format)")] = None,
    max_new_tokens: int = 128,
    min_identical: Annotated[float, typer.Option(help="Share of identical answers needed to pass parity")] = 0.9,
    backend: Annotated[str, typer.Option(help="Who answers for a GGUF in the parity check: transformers or llama.cpp")] = "transformers",
    untie_embeddings: Annotated[bool, typer.Option("--untie-embeddings", help="Allow merging an adapter that changes tied embeddings by untying them")] = False,
    precision: Annotated[str, typer.Option(help="Parity generation precision for both sides: fp32 (default), bf16 or auto")] = "fp32",
    threads: ThreadsOpt = None,
):
    """Export a run to the runtimes users run, and check that the export answers like the run."""
    if backend not in ("transformers", "llama.cpp"):
        raise TunesmithError("--backend must be transformers or llama.cpp")
    use_threads(threads, register="export")
    opts = ExportOptions(quant=quant, out=out, parity=parity, n=n, max_new_tokens=max_new_tokens, prompts=prompts,
                         min_identical=min_identical, backend=backend, untie_embeddings=untie_embeddings,
                         precision=precision)
    result = export_run(run, to, opts)
    from tunesmith.generate import run_data_config

    if prefixes := run_data_config(run).iri_prefixes:
        result.notes.append(f"the run reads and writes IRIs as prefixed names ({', '.join(prefixes)}: data.iri_prefixes), "
                            "and so does the export: compact the prompts' IRIs and expand the answers' "
                            "(tunesmith.data.iris), or serve the run with `tunesmith serve`, which does both")
    level = f" ({result.quant})" if result.quant else ""
    console.print(f"[green]Exported[/] {to}{level} to {result.out}: {', '.join(p.name for p in result.files)}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.parity and not result.parity_passed:
        console.print(f"[bold red]Parity failed[/]: the export answers differently from the run on some prompts "
                      f"(see {result.out / 'parity.json'}); try a larger --quant, or report it if f16/hf fails")
        raise typer.Exit(1)


def merge_command(run: Annotated[Path, typer.Argument(help="A trained run folder", show_default=False)],
                  out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default RUN/merged)")] = None,
                  quant: Annotated[Optional[str], typer.Option(help="bf16 (default), f16 or f32")] = None, precision: str = "fp32"):
    """Alias of `export RUN --to hf --out RUN/merged`: the adapter merged into a plain transformers folder."""
    export_command(run, "hf", quant=quant, out=out or run / "merged", precision=precision)
