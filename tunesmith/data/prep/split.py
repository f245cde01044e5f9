"""`tunesmith data split`: a seeded train/valid/test split that nothing leaks across.

Rows are grouped by a key (source document, topic, template, API name, ...) and whole groups are dealt
to the splits, so no group appears on two sides; optionally within strata of a field, so each split
keeps its label balance. Afterwards the leakage check of `tunesmith eval` (tunesmith/data/dedup.py: same or
near-duplicate prompts, shared answers) finds valid/test rows that overlap training rows — leakage a grouping key
cannot see — and reports them, or drops them when asked.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import Field, field_validator, model_validator

from tunesmith.cli import ConfigArg, ForceOpt, InputOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.dedup import Item, check_leakage
from tunesmith.data.prep.artifacts import field_value, iter_texts, skip_if_up_to_date, write_manifest
from tunesmith.files import atomic_write_json, atomic_write_jsonl, read_jsonl
from tunesmith.records import DataError, DataIssue, SourceRef, TunesmithError

SPLITS = ("train", "valid", "test")


class SplitConfig(Strict):
    train: float = Field(0.8, ge=0, le=1)
    valid: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 0
    group_by: str | None = Field("doc_id", description="Field (dotted path) whose rows stay together; None: every row alone")
    stratify_by: str | None = Field(None, description="Field whose value distribution each split keeps")
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="Word 3-gram Jaccard at which prompts count as near-duplicates")
    on_near_duplicate: Literal["report", "drop"] = Field("report", description="drop: remove the valid/test rows the leakage check flags")
    num_perm: int = Field(128, ge=16)

    @field_validator("group_by", mode="before")
    @classmethod
    def _none_means_row_by_row(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "null", "") else value

    @model_validator(mode="after")
    def _ratios(self) -> SplitConfig:
        if abs(self.train + self.valid + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must be 1 (is {self.train + self.valid + self.test:g})")
        return self


def _group_keys(rows: list[tuple[SourceRef, dict[str, Any]]], config: SplitConfig) -> list[str]:
    if config.group_by is None:
        return [str(i) for i in range(len(rows))]
    keys, issues = [], []
    for where, row in rows:
        value = field_value(row, config.group_by)
        if value is None:
            issues.append(DataIssue(where, f"has no {config.group_by!r} field to group by"))
        keys.append(str(value))
    if issues:
        raise DataError(issues, hint="Choose a group_by field every row has (e.g. doc_id, topic), or group_by=null to split row by row.")
    return keys


def assign_groups(sizes: dict[str, int], ratios: dict[str, float], rng: random.Random) -> dict[str, str]:
    """Deal whole groups to splits so each split's row count approaches its share."""
    order = sorted(sizes)
    rng.shuffle(order)
    wanted = [s for s in SPLITS if ratios[s] > 0]
    total = sum(sizes.values())
    assigned = {s: 0 for s in SPLITS}
    result: dict[str, str] = {}
    # With enough groups, every split that should exist gets at least one (the smaller splits first).
    if len(order) >= len(wanted):
        for split in sorted(wanted, key=lambda s: ratios[s]):
            if split == "train" and len(wanted) > 1:
                continue
            group = order.pop()
            result[group] = split
            assigned[split] += sizes[group]
    for group in order:
        split = max(wanted, key=lambda s: (ratios[s] * total - assigned[s], s == "train"))
        result[group] = split
        assigned[split] += sizes[group]
    return result


def leakage_item(row: dict[str, Any]) -> Item:
    """What the leakage check compares, as `tunesmith eval` sees the same row: the last user message and the final
    assistant message of a chat; the text of any other row."""
    messages = row.get("messages") if isinstance(row.get("messages"), list) else None
    if messages:
        turns = [m for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
        users = [m["content"] for m in turns if m.get("role") == "user"]
        target = turns[-1]["content"] if turns and turns[-1].get("role") == "assistant" else None
        return Item(users[-1] if users else "", target)
    return Item("\n".join(iter_texts(row)))


def split_rows(rows: list[tuple[SourceRef, dict[str, Any]]], config: SplitConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(rows per split, report)."""
    keys = _group_keys(rows, config)
    strata: dict[str, str] = {}
    if config.stratify_by:
        by_group: dict[str, Counter[str]] = defaultdict(Counter)
        for key, (_, row) in zip(keys, rows):
            by_group[key][str(field_value(row, config.stratify_by))] += 1
        strata = {key: counts.most_common(1)[0][0] for key, counts in by_group.items()}
    sizes_by_stratum: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key in keys:
        sizes_by_stratum[strata.get(key, "")][key] += 1

    ratios = {"train": config.train, "valid": config.valid, "test": config.test}
    rng = random.Random(config.seed)
    group_split: dict[str, str] = {}
    for stratum in sorted(sizes_by_stratum):
        group_split.update(assign_groups(dict(sizes_by_stratum[stratum]), ratios, rng))

    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    groups_per_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for key, (_, row) in zip(keys, rows):
        out[group_split[key]].append(row)
        groups_per_split[group_split[key]].add(key)

    train_items = [leakage_item(row) for row in out["train"]]
    leakage: dict[str, Any] = {"threshold": config.near_duplicate_threshold, "leaked_rows": {}, "dropped": 0, "rows": []}
    for split in ("valid", "test"):
        found = check_leakage(train_items, [leakage_item(row) for row in out[split]], config.near_duplicate_threshold,
                              config.num_perm)
        leakage["leaked_rows"][split] = len(found.leaked_items)
        for kind in ("exact_prompts", "near_duplicate_prompts", "shared_targets"):
            leakage["rows"] += [{"split": split, "kind": kind, **d} for d in getattr(found, kind)]
        if config.on_near_duplicate == "drop" and found.leaked_items:
            out[split] = [row for i, row in enumerate(out[split]) if i not in found.leaked_items]
            leakage["dropped"] += len(found.leaked_items)
    leakage["found"] = sum(leakage["leaked_rows"].values())
    leakage["rows"] = leakage["rows"][:200]

    warnings = [
        f"{split} is empty: only {len(group_split)} group(s) of {config.group_by!r}; group by a finer field (e.g. chunk_id or topic)"
        for split in SPLITS
        if ratios[split] > 0 and not out[split]
    ]
    report = {
        "rows": {s: len(out[s]) for s in SPLITS},
        "groups": {s: len(groups_per_split[s]) for s in SPLITS},
        "group_by": config.group_by,
        "groups_on_two_sides": 0,  # true by construction: each group is dealt to exactly one split
        "strata": {
            s: dict(Counter(str(field_value(r, config.stratify_by)) for r in out[s])) for s in SPLITS
        }
        if config.stratify_by
        else None,
        "leakage": leakage,
        "warnings": warnings,
    }
    return out, report


def split_command(
    input: InputOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for train.jsonl, valid.jsonl, test.jsonl and report.json", show_default=False)],
    config: ConfigArg = None, overrides: SetOpt = None,
    group_by: Annotated[Optional[str], typer.Option(help="Field whose rows stay on one side; 'none' for row by row (split.group_by)")] = None,
    stratify_by: Annotated[Optional[str], typer.Option(help="Field whose distribution each split keeps (split.stratify_by)")] = None,
    ratios: Annotated[Optional[str], typer.Option(help="train,valid,test fractions, e.g. 0.8,0.1,0.1 (split.train/valid/test)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="split.seed")] = None,
    drop_near_duplicates: Annotated[bool, typer.Option("--drop-near-duplicates", help="Remove valid/test rows that leak from training (split.on_near_duplicate=drop)")] = False,
    force: ForceOpt = False,
) -> None:
    """Seeded grouped split, with the leakage check of `tunesmith eval` across the splits."""
    from tunesmith.data.prep.config import step_settings

    shares: list[float | None] = [None, None, None]
    if ratios is not None:
        try:
            shares = [float(x) for x in ratios.split(",")]
        except ValueError:
            shares = []
        if len(shares) != 3:
            raise TunesmithError(f"--ratios {ratios!r}: give three numbers, e.g. 0.8,0.1,0.1")
    cfg = step_settings("split", config, overrides, {
        "split.group_by": group_by, "split.stratify_by": stratify_by, "split.seed": seed,
        "split.train": shares[0], "split.valid": shares[1], "split.test": shares[2],
        "split.on_near_duplicate": "drop" if drop_near_duplicates else None})
    settings = cfg.model_dump(mode="json")
    if skip_if_up_to_date(out, "split", settings, [input], force):
        return
    parts, report = split_rows(read_jsonl(input), cfg)
    written = []
    for split in SPLITS:
        target = out / f"{split}.jsonl"
        if parts[split] or getattr(cfg, split) > 0:
            atomic_write_jsonl(target, parts[split])
            written.append(target)
        elif target.exists():
            target.unlink()
    atomic_write_json(out / "report.json", report)
    write_manifest(out, "split", settings, [input], written + [out / "report.json"], report["rows"])
    console.print(f"{out}: " + ", ".join(f"{s} {report['rows'][s]} rows / {report['groups'][s]} groups" for s in SPLITS))
    leak = report["leakage"]
    if leak["found"]:
        console.print(f"[yellow]{leak['found']} valid/test rows overlap the training rows[/yellow] (same or near-duplicate "
                      f"prompt, Jaccard ≥ {leak['threshold']}, or same answer); "
                      + ("dropped" if leak["dropped"] else f"see {out / 'report.json'}, or pass --drop-near-duplicates"))
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
