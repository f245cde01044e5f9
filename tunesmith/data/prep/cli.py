"""The `tunesmith data` prep verbs: ingest, generate, augment, anonymize, split, stats.

Every verb takes an optional `--config prep.yaml` (one file for the whole chain: a section per verb,
e.g. `generate: {pairs_per_chunk: 3, teacher: {kind: local}}`), `--set key=value` overrides, and a few
direct options. A verb whose output is up to date with its inputs and config does nothing (use --force).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console

from tunesmith.config import ConfigError, format_validation_errors, yaml_line_index, apply_overrides
from tunesmith.data.prep import artifacts
from tunesmith.data.prep.progress import rich_progress
from tunesmith.records import TunesmithError

console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML file with a section per step (ingest:, generate:, ...)")
SetOption = typer.Option([], "--set", "-s", help="Override a setting: key=value, e.g. teacher.concurrency=8")
ForceOption = typer.Option(False, "--force", help="Run even if the output is up to date with its inputs and config")


def load_step_config(model: type[BaseModel], section: str, path: Path | None, overrides: list[str], options: dict[str, Any]) -> Any:
    """The step's section of the YAML file, then --set overrides, then direct options; validated at once."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "<command line>"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        text = path.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping with a section per step ({section}: ...)")
        data = dict(loaded.get(section) or {})
        source = str(path)
        lines = {key[1:]: line for key, line in yaml_line_index(text).items() if key[:1] == (section,) and len(key) > 1}
    data = apply_overrides(data, overrides)
    for dotted, value in options.items():
        if value is not None:
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, source, lines).replace("in the config", f"in the {section} settings")) from None


def friendly_errors(command):
    """Show a TunesmithError as its message (which says what to do), not as a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TunesmithError as e:
            console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None  # the top-level CLI exits 2 on user errors too

    return wrapper


def _up_to_date(output: Path, step: str, config: dict[str, Any], inputs: list[Path], force: bool) -> bool:
    if not force and artifacts.is_up_to_date(output, step, config, inputs):
        console.print(f"{output}: up to date with its inputs and settings (nothing to do; --force to redo)")
        return True
    return False


def ingest_command(
    inputs: list[Path] = typer.Argument(..., help="Files or folders (.txt .md .html .pdf .docx .json .jsonl, source code)"),
    out: Path = typer.Option(..., "--out", "-o", help="Chunks file to write (.jsonl)"),
    max_tokens: int | None = typer.Option(None, help="Largest chunk in tokens"),
    overlap_tokens: int | None = typer.Option(None, help="Tokens shared by consecutive chunks"),
    on_error: str | None = typer.Option(None, help="error (default) or skip unreadable files"),
    config: Path | None = ConfigOption,
    set_: list[str] = SetOption,
    force: bool = ForceOption,
) -> None:
    """Read documents and cut them into topic chunks (by headings, then by token budget)."""
    from tunesmith.data.prep.ingest import IngestConfig, collect_files, ingest

    cfg = load_step_config(
        IngestConfig, "ingest", config, set_,
        {"chunking.max_tokens": max_tokens, "chunking.overlap_tokens": overlap_tokens, "on_error": on_error},
    )
    settings = cfg.model_dump(mode="json")
    files = [path for path, _ in collect_files(inputs)[0]]
    if _up_to_date(out, "ingest", settings, files, force):
        return
    with rich_progress() as progress:
        progress.phase("ingest: reading", len(files))
        chunks, read, issues = ingest(inputs, cfg, progress=progress.advance)
    artifacts.write_jsonl(out, chunks)
    for issue in issues:
        console.print(f"[yellow]skipped[/yellow] {issue}")
    counts = {"files": len(read), "documents": len({c["doc_id"] for c in chunks}), "chunks": len(chunks), "skipped_files": [str(i) for i in issues]}
    artifacts.write_manifest(out, "ingest", settings, read, [out], counts)
    console.print(f"{out}: {len(chunks)} chunks from {len(read)} files" + (f", {len(issues)} skipped" if issues else ""))


def _rejects_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")


def generate_command(
    input: Path = typer.Option(..., "--input", "-i", help="Chunks file from `ingest`"),
    out: Path = typer.Option(..., "--out", "-o", help="Training pairs to write (chat messages JSONL)"),
    teacher: str | None = typer.Option(None, help="local (transformers) or openai (any OpenAI-compatible endpoint)"),
    model: str | None = typer.Option(None, help="Teacher model name"),
    pairs_per_chunk: int | None = typer.Option(None, "--pairs-per-chunk", "-n"),
    strategy: str | None = typer.Option(None, help="json_list or question_then_answer"),
    config: Path | None = ConfigOption,
    set_: list[str] = SetOption,
    force: bool = ForceOption,
) -> None:
    """Let a teacher LLM write question/answer pairs about every chunk, filtered; rejects kept with reasons."""
    from tunesmith.data.prep.generate import GenerateConfig, generate_pairs, reject_counts
    from tunesmith.data.prep.teacher import make_teacher

    cfg = load_step_config(
        GenerateConfig, "generate", config, set_,
        {"teacher.kind": teacher, "teacher.model": model, "pairs_per_chunk": pairs_per_chunk, "strategy": strategy},
    )
    settings = cfg.model_dump(mode="json")
    if _up_to_date(out, "generate", settings, [input], force):
        return
    chunks = [row for _, row in artifacts.read_jsonl(input)]
    the_teacher = make_teacher(cfg.teacher)
    try:
        with rich_progress() as progress:
            accepted, rejects = generate_pairs(chunks, cfg, the_teacher, progress)
    finally:
        the_teacher.close()
    rejects_file = _rejects_path(out)
    artifacts.write_jsonl(out, accepted)
    artifacts.write_jsonl(rejects_file, rejects)
    counts = {
        "chunks": len(chunks),
        "accepted": len(accepted),
        "rejected": len(rejects),
        "rejected_by_reason": reject_counts(rejects),
        "teacher_requests": the_teacher.calls,
        "cache_hits": the_teacher.cache_hits,
    }
    artifacts.write_manifest(out, "generate", settings, [input], [out, rejects_file], counts)
    console.print(f"{out}: {len(accepted)} pairs kept, {len(rejects)} rejected (see {rejects_file}); "
                  f"{the_teacher.calls} teacher requests, {the_teacher.cache_hits} from cache")


def augment_command(
    input: Path = typer.Option(..., "--input", "-i", help="Pairs file (chat messages JSONL)"),
    out: Path = typer.Option(..., "--out", "-o"),
    paraphrases: int | None = typer.Option(None, help="Teacher paraphrases per prompt (0: templates only)"),
    template: list[str] = typer.Option([], help='Prompt template with {prompt}, e.g. "Quick question: {prompt}" (repeatable)'),
    config: Path | None = ConfigOption,
    set_: list[str] = SetOption,
    force: bool = ForceOption,
) -> None:
    """Add paraphrased and template-varied prompts; variants keep their original's group keys."""
    from tunesmith.data.prep.augment import AugmentConfig, augment_rows
    from tunesmith.data.prep.teacher import make_teacher

    cfg = load_step_config(AugmentConfig, "augment", config, set_, {"paraphrases_per_row": paraphrases, "templates": template or None})
    settings = cfg.model_dump(mode="json")
    if _up_to_date(out, "augment", settings, [input], force):
        return
    rows = [row for _, row in artifacts.read_jsonl(input)]
    the_teacher = make_teacher(cfg.teacher) if cfg.paraphrases_per_row else None
    try:
        with rich_progress() as progress:
            augmented, rejects = augment_rows(rows, cfg, the_teacher, progress)
    finally:
        if the_teacher:
            the_teacher.close()
    rejects_file = _rejects_path(out)
    artifacts.write_jsonl(out, augmented)
    artifacts.write_jsonl(rejects_file, rejects)
    counts = {"input_rows": len(rows), "output_rows": len(augmented), "rejected": len(rejects)}
    artifacts.write_manifest(out, "augment", settings, [input], [out, rejects_file], counts)
    console.print(f"{out}: {len(rows)} rows → {len(augmented)} ({len(rejects)} variants rejected)")


def anonymize_command(
    input: Path = typer.Option(..., "--input", "-i"),
    out: Path = typer.Option(..., "--out", "-o"),
    mapping: Path | None = typer.Option(None, help="PRIVATE value→pseudonym file (default: <out>.mapping.private.json); reused if it exists"),
    audit: Path | None = typer.Option(None, help="Audit log (default: <out>.audit.jsonl); holds hashes, never values"),
    replace_with: str | None = typer.Option(None, help="placeholder (<PERSON_1>) or fake (type-preserving made-up values)"),
    ner: bool | None = typer.Option(None, "--ner/--no-ner", help="Use the NER models (anonymize.ner_models) besides the rules"),
    config: Path | None = ConfigOption,
    set_: list[str] = SetOption,
    force: bool = ForceOption,
) -> None:
    """Replace personal data consistently; the mapping goes to a separate private file."""
    from tunesmith.data.prep.anonymize import AnonymizeConfig, Pseudonyms, anonymize_rows

    cfg = load_step_config(AnonymizeConfig, "anonymize", config, set_, {"replace_with": replace_with, "ner": ner})
    settings = cfg.model_dump(mode="json")
    mapping = mapping or out.with_name(out.stem + ".mapping.private.json")
    audit = audit or out.with_name(out.stem + ".audit.jsonl")
    if mapping.resolve() in (out.resolve(), audit.resolve(), input.resolve()):
        raise TunesmithError("--mapping must be a file of its own, apart from the data (it holds the real values)")
    if _up_to_date(out, "anonymize", settings, [input], force):
        return
    rows = artifacts.read_jsonl(input)
    pseudonyms = Pseudonyms(cfg.replace_with, cfg.seed)
    if mapping.is_file():
        pseudonyms.load(mapping)
    with rich_progress() as progress:
        result = anonymize_rows(rows, cfg, pseudonyms=pseudonyms, progress=progress)
    if result.leaks:
        raise TunesmithError("detected PII survived anonymization (nothing written):\n  " + "\n  ".join(result.leaks[:20]))
    artifacts.write_jsonl(out, result.rows)
    artifacts.write_jsonl(audit, result.audit)
    pseudonyms.save(mapping)
    counts = {"rows": len(rows), "found": dict(result.found), "replaced": dict(result.replaced), "leaks": 0}
    # The mapping is deliberately not listed among the outputs: the manifest travels with the data.
    artifacts.write_manifest(out, "anonymize", settings, [input], [out, audit], counts)
    console.print(f"{out}: {sum(result.replaced.values())} replacements of {sum(result.found.values())} new PII values; "
                  f"mapping (keep private) in {mapping}, audit log in {audit}")


def split_command(
    input: Path = typer.Option(..., "--input", "-i"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, valid.jsonl, test.jsonl and report.json"),
    group_by: str | None = typer.Option(None, help="Field whose rows stay on one side (default doc_id; 'none' for rows)"),
    stratify_by: str | None = typer.Option(None, help="Field whose distribution each split keeps"),
    ratios: str | None = typer.Option(None, help="train,valid,test fractions, e.g. 0.8,0.1,0.1"),
    seed: int | None = typer.Option(None),
    drop_near_duplicates: bool | None = typer.Option(None, "--drop-near-duplicates", help="Remove valid/test rows that near-duplicate training rows"),
    config: Path | None = ConfigOption,
    set_: list[str] = SetOption,
    force: bool = ForceOption,
) -> None:
    """Seeded grouped split with MinHash near-duplicate detection across splits."""
    from tunesmith.data.prep.split import SPLITS, SplitConfig, split_rows

    options: dict[str, Any] = {"stratify_by": stratify_by, "seed": seed}
    if group_by is not None:
        options["group_by"] = group_by
    if ratios is not None:
        try:
            options["train"], options["valid"], options["test"] = (float(x) for x in ratios.split(","))
        except ValueError:
            raise TunesmithError(f"--ratios {ratios!r}: give three numbers, e.g. 0.8,0.1,0.1") from None
    if drop_near_duplicates:
        options["on_near_duplicate"] = "drop"
    cfg = load_step_config(SplitConfig, "split", config, set_, options)
    if cfg.group_by in ("none", "null", ""):
        cfg.group_by = None
    settings = cfg.model_dump(mode="json")
    if _up_to_date(out, "split", settings, [input], force):
        return
    rows = artifacts.read_jsonl(input)
    parts, report = split_rows(rows, cfg)
    written = []
    for split in SPLITS:
        target = out / f"{split}.jsonl"
        if parts[split] or getattr(cfg, split) > 0:
            artifacts.write_jsonl(target, parts[split])
            written.append(target)
        elif target.exists():
            target.unlink()
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    artifacts.write_manifest(out, "split", settings, [input], written + [out / "report.json"], report["rows"])
    console.print(f"{out}: " + ", ".join(f"{s} {report['rows'][s]} rows / {report['groups'][s]} groups" for s in SPLITS))
    near = report["near_duplicates"]
    if near["found"]:
        console.print(f"[yellow]{near['found']} valid/test rows near-duplicate training rows[/yellow] (Jaccard ≥ {near['threshold']}); "
                      + ("dropped" if near["dropped"] else f"see {out / 'report.json'}, or pass --drop-near-duplicates"))
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def stats_command(
    input: Path = typer.Argument(..., help="Any prep JSONL file"),
    field: list[str] = typer.Option([], help="Show the balance of this field (repeatable), e.g. topic"),
    tokenizer: str | None = typer.Option(None, help="tokenizer.json for token counts (default: words)"),
    scan_pii: bool = typer.Option(False, "--scan-pii", help="Also run the PII detector over the text"),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the numbers as JSON"),
) -> None:
    """Counts, token-length histogram, label balance, duplicates and PII of a prep file."""
    from tunesmith.data.prep.stats import compute_stats, render_stats

    detector = None
    if scan_pii:
        from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector

        detector = PiiDetector(AnonymizeConfig())
    stats = compute_stats(input, artifacts.read_jsonl(input), field, tokenizer, detector)
    render_stats(stats, Console())
    if json_out:
        json_out.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Add the prep verbs to a Typer app (the `tunesmith data` sub-app)."""
    for name, command in (
        ("ingest", ingest_command),
        ("generate", generate_command),
        ("augment", augment_command),
        ("anonymize", anonymize_command),
        ("split", split_command),
        ("stats", stats_command),
    ):
        app.command(name)(friendly_errors(command))
