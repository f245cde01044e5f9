"""The report: report.json (everything), report.md (for a repository), report.html (one self-contained file).

Both documents are rendered by jinja2 from the same view of a typed `EvalReport`, so they cannot disagree; plots
are drawn with matplotlib (Agg, no display), embedded in the HTML as base64 PNG, and saved beside report.md.
Metric names, scales and descriptions come from the metric registry (tunesmith/eval/metrics.py).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import jinja2

from tunesmith.eval.metrics import display_name, scale_of
from tunesmith.eval.results import EvalReport
from tunesmith.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def short(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- the words ----

def verdict(report: EvalReport) -> list[str]:
    """Plain-language conclusions: who wins, by how much, at what cost, whether forgetting or leakage was seen."""
    h, conf = report.headline, round(100 * report.confidence)
    comparisons = report.comparisons
    winner = report.variant(comparisons.winner)
    lines = []
    if not report.leakage.clean:
        lines.append(f"Warning: {len(report.leakage.leaked_items)} of {report.n_test} test items overlap the training data "
                     "(see the leakage check); scores on them say little.")
    w_low, w_high = winner.headline_ci
    lead = (f"**{winner.name}** scores best on {display_name(h)}: {fmt(winner.scores[h])} "
            f"({conf}% CI {fmt(w_low)}–{fmt(w_high)}) on {report.n_test} held-out items")
    if comparisons.difference is not None:
        d = comparisons.difference
        judged = ("a real difference: the interval excludes zero" if d.significant
                  else "not a clear difference: the interval includes zero, so more test items are needed to separate them")
        lead += (f", {d.mean:+.1f} points over {comparisons.runner_up} "
                 f"({conf}% CI of the paired difference {d.ci[0]:+.1f} to {d.ci[1]:+.1f}; {judged}).")
    else:
        lead += "."
    lines.append(lead)
    tva = comparisons.tuned_vs_best_alternative
    if tva:
        tuned, alt = report.variant(tva.tuned), report.variant(tva.alternative)
        cost = tuned.cost
        spent = []
        if cost and cost.train_seconds is not None:
            spent.append(f"{cost.train_seconds / 60:.1f} min of training")
        if cost and cost.trained_tokens is not None:
            spent.append(f"{cost.trained_tokens:,} trained tokens")
        if cost and cost.trainable_parameters is not None:
            spent.append(f"{cost.trainable_parameters:,} trainable parameters")
        spent_text = f" It cost {', '.join(spent)}." if spent else ""
        speed = (f" Per item, {tuned.name} takes {tuned.seconds_per_item:.2f} s to answer with "
                 f"{tuned.prompt_tokens_mean:.0f} prompt tokens, {alt.name} {alt.seconds_per_item:.2f} s with "
                 f"{alt.prompt_tokens_mean:.0f}.")
        if tva.mean > 0 and tva.significant:
            lines.append(f"Fine-tuning was worth it: {tuned.name} beats the best variant without training "
                         f"({alt.name}) by {tva.mean:+.1f} points of {display_name(h)}.{spent_text}{speed}")
        elif tva.mean > 0:
            lines.append(f"Fine-tuning helped only marginally: {tuned.name} is {tva.mean:+.1f} points above "
                         f"{alt.name}, within the noise of {report.n_test} items.{spent_text}{speed}")
        else:
            lines.append(f"Fine-tuning was not worth it here: {alt.name} does as well or better without training "
                         f"({-tva.mean:.1f} points ahead of {tuned.name}).{spent_text}{speed}")
    measured, runs_seen = [], set()
    for v in report.variants:  # tuned and tuned+rag are one model: report its forgetting once
        if v.forgetting is not None and (v.run or v.name) not in runs_seen:
            runs_seen.add(v.run or v.name)
            measured.append(v)
    flagged = [v for v in measured if v.forgetting.verdict.flagged]
    if flagged:
        for v in flagged:
            lines.append(f"Forgetting seen in {v.name}: " + "; ".join(v.forgetting.verdict.reasons) + ".")
    elif measured:
        parts = []
        for v in measured:
            fv = v.forgetting.verdict
            kl = f", KL(base‖tuned) {fv.kl_from_base:.3f} nats/token" if fv.kl_from_base is not None else ""
            parts.append(f"{v.name}: general-text perplexity {100 * fv.text_perplexity_change:+.0f}%, "
                         f"chrF of general answers {fv.chrf_change:+.1f}{kl}")
        lines.append("No forgetting beyond the thresholds on general instructions (" + "; ".join(parts) + ").")
    return lines


# ---- plots ----

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def plot_headline(report: EvalReport) -> bytes:
    plt = _pyplot()
    h = report.headline
    low_end, high_end = scale_of(h)
    names = [v.name for v in report.variants]
    values = [v.scores[h] for v in report.variants]
    low = [max(0.0, val - v.headline_ci[0]) for val, v in zip(values, report.variants)]
    high = [max(0.0, v.headline_ci[1] - val) for val, v in zip(values, report.variants)]
    colors = ["#2b8a3e" if v.kind == "tuned" else "#868e96" for v in report.variants]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(names, values, yerr=[low, high], capsize=4, color=colors)
    for x, val in enumerate(values):
        ax.text(x, val + 1, f"{val:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(f"{display_name(h)} ({low_end:g}–{high_end:g})")
    ax.set_ylim(low_end, max(high_end, max(values) * 1.15) if values else high_end)
    ax.set_title(f"{display_name(h)} with {round(100 * report.confidence)}% bootstrap CI")
    ax.tick_params(axis="x", labelrotation=15)
    return _png(fig)


def plot_metrics(report: EvalReport) -> bytes:
    import numpy as np

    plt = _pyplot()
    metrics = [m.name for m in report.metrics]
    variants = report.variants
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(metrics)), 3.2))
    for i, v in enumerate(variants):
        ax.bar(np.arange(len(metrics)) + i * width, [v.scores[m] for m in metrics], width, label=v.name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(variants) - 1) / 2, [display_name(m) for m in metrics],
                  rotation=20, ha="right")
    ax.set_ylabel("score (0–100)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("every metric, every variant")
    return _png(fig)


def plot_loss_curves(report: EvalReport) -> bytes | None:
    curves = [(v.name, v.loss_curve) for v in report.variants if v.loss_curve is not None and v.loss_curve.step]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    seen = set()
    for name, curve in curves:
        if tuple(curve.loss) in seen:  # tuned and tuned+rag share one training run
            continue
        seen.add(tuple(curve.loss))
        ax.plot(curve.step, curve.loss, label=f"{name}: train")
        if curve.valid_step:
            ax.plot(curve.valid_step, curve.valid_loss, "o", label=f"{name}: valid")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.set_title("training loss (from the run's metrics.jsonl)")
    ax.legend(fontsize=8)
    return _png(fig)


# ---- tables as data, shared by both renderings ----

def view(report: EvalReport, worst: int = 8) -> dict[str, Any]:
    h = report.headline
    metrics = [m.name for m in report.metrics]
    headline_rows = []
    for v in report.variants:
        cost = v.cost
        cells = []
        for m in metrics:
            cell = fmt(v.scores[m])
            if m == h:
                cell += f" [{fmt(v.headline_ci[0])}, {fmt(v.headline_ci[1])}]"
            cells.append(cell)
        headline_rows.append({
            "name": v.name, "winner": v.name == report.comparisons.winner, "cells": cells,
            "ppl": fmt(v.reference_perplexity, 2), "s_item": fmt(v.seconds_per_item, 2),
            "prompt_tokens": fmt(v.prompt_tokens_mean, 0), "peak_mb": fmt(v.peak_rss_mb, 0),
            "train_min": fmt(cost.train_seconds / 60, 1) if cost and cost.train_seconds is not None else "–",
            "trained_tokens": fmt(cost.trained_tokens if cost else None),
            "trainable": fmt(cost.trainable_parameters if cost else None),
        })
    breakdowns = []
    for v0 in report.variants[:1]:
        for field, groups in v0.breakdown.items():
            rows = [{"value": value, "n": cell.n, "cells": [fmt(v.breakdown[field][value].score) for v in report.variants]}
                    for value, cell in groups.items()]
            breakdowns.append({"field": field, "rows": rows})

    forgetting = None
    base = report.forgetting_base
    if base is not None:
        rows = [{"name": "base", "text_ppl": fmt(base.text_perplexity, 2), "answer_ppl": fmt(base.answer_perplexity, 2),
                 "chrf": fmt(base.answer_chrf), "kl": "–", "flag": ""}]
        tuned_forgetting = [v for v in report.variants if v.forgetting is not None]
        for v in tuned_forgetting:
            s, fv = v.forgetting.scores, v.forgetting.verdict
            rows.append({"name": v.name,
                         "text_ppl": f"{fmt(s.text_perplexity, 2)} ({100 * fv.text_perplexity_change:+.0f}%)",
                         "answer_ppl": f"{fmt(s.answer_perplexity, 2)} ({100 * fv.answer_perplexity_change:+.0f}%)",
                         "chrf": f"{fmt(s.answer_chrf)} ({fv.chrf_change:+.1f})",
                         "kl": fmt(fv.kl_from_base, 3), "flag": "REGRESSION" if fv.flagged else "ok"})
        examples = []
        for i, prompt in enumerate(report.general_prompts[:3]):
            examples.append({"prompt": short(prompt, 160), "human": short(report.general_answers[i], 160),
                             "answers": [("base", short(base.answers[i], 160))] +
                                        [(v.name, short(v.forgetting.scores.answers[i], 160)) for v in tuned_forgetting]})
        forgetting = {"rows": rows, "examples": examples, "n": len(report.general_prompts)}

    # Worst failures of the variant that matters most: the best tuned one if any, else the winner.
    tuned = [v for v in report.variants if v.kind == "tuned"]
    focus = max(tuned, key=lambda v: v.scores[h]) if tuned else report.variant(report.comparisons.winner)
    secondary = "token_f1" if "token_f1" in focus.items else h
    order = sorted(range(report.n_test), key=lambda i: (focus.items[h][i], focus.items[secondary][i]))
    breakdown_fields = set(report.variants[0].breakdown) if report.variants else set()
    failures = []
    for i in order[:worst]:
        if focus.items[h][i] >= 100.0:
            break
        item = report.items[i]
        failures.append({"index": i, "question": short(item.question, 200), "reference": short(item.reference, 300),
                         "meta": ", ".join(f"{k}={v}" for k, v in item.meta.items() if k in breakdown_fields),
                         "answers": [(v.name, short(v.predictions[i], 300), v.items[h][i] >= 100.0)
                                     for v in report.variants]})
    leak = report.leakage
    return {
        "title": report.title, "headline": display_name(h), "metric_names": [display_name(m) for m in metrics],
        "variant_names": [v.name for v in report.variants], "headline_rows": headline_rows,
        "breakdowns": breakdowns, "forgetting": forgetting, "failures": failures, "focus": focus.name,
        "verdict": verdict(report), "leak": leak, "n_test": report.n_test, "n_train": report.n_train,
        "confidence": round(100 * report.confidence), "wall_seconds": report.wall_seconds,
        "leak_examples": (leak.exact_prompts + leak.near_duplicate_prompts + leak.shared_targets)[:5],
        "metric_help": [(display_name(m.name), m.description) for m in report.metrics],
    }


MARKDOWN = """# {{ title }}

{% for line in verdict %}{{ line }}

{% endfor %}
## Leakage check
{% if leak.clean %}Clean: no test prompt appears in the training data verbatim or as a near-duplicate (word 3-gram Jaccard ≥ {{ leak.threshold }}), and no test reference is a training target ({{ n_test }} test items vs {{ n_train }} training items).
{% else %}**{{ leak.leaked_items|length }} of {{ n_test }} test items overlap the training data**: {{ leak.exact_prompts|length }} identical prompts, {{ leak.near_duplicate_prompts|length }} near-duplicate prompts (Jaccard ≥ {{ leak.threshold }}), {{ leak.shared_targets|length }} shared targets.
{% for d in leak_examples %}- test item {{ d.test }} ↔ training item {{ d.train }}{% if d.jaccard is defined %} (Jaccard {{ d.jaccard }}){% endif %}
{% endfor %}{% endif %}
## Headline: {{ headline }} with {{ confidence }}% bootstrap CI

| variant | {{ metric_names|join(' | ') }} | ref. perplexity | s / item | prompt tokens | peak MB | train min | trained tokens | trainable params |
|---|{% for m in metric_names %}---|{% endfor %}---|---|---|---|---|---|---|
{% for r in headline_rows %}| {% if r.winner %}**{{ r.name }}**{% else %}{{ r.name }}{% endif %} | {{ r.cells|join(' | ') }} | {{ r.ppl }} | {{ r.s_item }} | {{ r.prompt_tokens }} | {{ r.peak_mb }} | {{ r.train_min }} | {{ r.trained_tokens }} | {{ r.trainable }} |
{% endfor %}
![{{ headline }}](plots/headline.png)

![all metrics](plots/metrics.png)
{% if has_loss %}
![training loss](plots/loss.png)
{% endif %}
{% for b in breakdowns %}
## {{ headline }} by {{ b.field }}

| {{ b.field }} | n | {{ variant_names|join(' | ') }} |
|---|---|{% for v in variant_names %}---|{% endfor %}
{% for r in b.rows %}| {{ r.value }} | {{ r.n }} | {{ r.cells|join(' | ') }} |
{% endfor %}{% endfor %}
{% if forgetting %}
## Forgetting: general instructions the model was not tuned on ({{ forgetting.n }} Self-Instruct seed tasks)

| model | general-text perplexity | perplexity of human answers | chrF of its answers | KL(base‖tuned) nats/token | |
|---|---|---|---|---|---|
{% for r in forgetting.rows %}| {{ r.name }} | {{ r.text_ppl }} | {{ r.answer_ppl }} | {{ r.chrf }} | {{ r.kl }} | {{ r.flag }} |
{% endfor %}
{% for e in forgetting.examples %}- **{{ e.prompt }}** — human: {{ e.human }}
{% for name, answer in e.answers %}  - {{ name }}: {{ answer }}
{% endfor %}{% endfor %}{% endif %}
## Worst failures of {{ focus }}
{% for f in failures %}
**#{{ f.index }}** {{ f.question }}{% if f.meta %} ({{ f.meta }}){% endif %}

- reference: `{{ f.reference }}`
{% for name, answer, ok in f.answers %}- {{ name }}{% if ok %} ✓{% endif %}: `{{ answer }}`
{% endfor %}{% endfor %}
## Metrics
{% for name, help in metric_help %}- **{{ name }}**: {{ help }}
{% endfor %}- **ref. perplexity**: perplexity of the reference answers given each variant's prompt (lower is better)
- cost columns: generation latency per item and peak resident memory measured here; training time, trained tokens and trainable parameters from the run folder.
{% if wall_seconds %}
Evaluation took {{ wall_seconds }} s.{% endif %}
"""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 24px auto; padding: 0 16px; color: #212529; }
h1 { margin-bottom: 4px; } h2 { margin-top: 28px; border-bottom: 1px solid #dee2e6; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #dee2e6; padding: 4px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
tr.winner td { background: #ebfbee; font-weight: 600; }
.verdict { background: #f1f3f5; border-left: 4px solid #2b8a3e; padding: 8px 14px; }
.leak-ok { background: #ebfbee; border-left: 4px solid #2b8a3e; padding: 8px 14px; }
.leak-bad { background: #fff4e6; border-left: 4px solid #e8590c; padding: 8px 14px; }
.fail td { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.ok { color: #2b8a3e; font-weight: 700; } .flag { color: #c92a2a; font-weight: 700; }
img { max-width: 100%; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
small { color: #868e96; }
</style></head><body>
<h1>{{ title }}</h1>
<small>{{ n_test }} held-out items · {{ n_train }} training items · headline metric: {{ headline }}{% if wall_seconds %} · evaluated in {{ wall_seconds }} s{% endif %}</small>
<h2>Leakage check</h2>
{% if leak.clean %}<div class="leak-ok">Clean: no test prompt appears in the training data verbatim or as a near-duplicate
(word 3-gram Jaccard ≥ {{ leak.threshold }}), and no test reference is a training target.</div>
{% else %}<div class="leak-bad"><b>{{ leak.leaked_items|length }} of {{ n_test }} test items overlap the training data</b>:
{{ leak.exact_prompts|length }} identical prompts, {{ leak.near_duplicate_prompts|length }} near-duplicates, {{ leak.shared_targets|length }} shared targets.
<ul>{% for d in leak_examples %}<li>test item {{ d.test }} ↔ training item {{ d.train }}{% if d.jaccard is defined %} (Jaccard {{ d.jaccard }}){% endif %}</li>{% endfor %}</ul></div>{% endif %}
<h2>Verdict</h2>
<div class="verdict">{% for line in verdict %}<p>{{ line|bold }}</p>{% endfor %}</div>
<h2>Headline: {{ headline }} with {{ confidence }}% bootstrap CI</h2>
<table><tr><th>variant</th>{% for m in metric_names %}<th>{{ m }}</th>{% endfor %}<th>ref. perplexity</th><th>s / item</th>
<th>prompt tokens</th><th>peak MB</th><th>train min</th><th>trained tokens</th><th>trainable params</th></tr>
{% for r in headline_rows %}<tr{% if r.winner %} class="winner"{% endif %}><td>{{ r.name }}</td>{% for c in r.cells %}<td>{{ c }}</td>{% endfor %}
<td>{{ r.ppl }}</td><td>{{ r.s_item }}</td><td>{{ r.prompt_tokens }}</td><td>{{ r.peak_mb }}</td><td>{{ r.train_min }}</td><td>{{ r.trained_tokens }}</td><td>{{ r.trainable }}</td></tr>
{% endfor %}</table>
<div class="plots">{% for name, png in plots %}<img alt="{{ name }}" src="data:image/png;base64,{{ png }}">{% endfor %}</div>
{% for b in breakdowns %}<h2>{{ headline }} by {{ b.field }}</h2>
<table><tr><th>{{ b.field }}</th><th>n</th>{% for v in variant_names %}<th>{{ v }}</th>{% endfor %}</tr>
{% for r in b.rows %}<tr><td>{{ r.value }}</td><td>{{ r.n }}</td>{% for c in r.cells %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% endfor %}
{% if forgetting %}<h2>Forgetting: general instructions the model was not tuned on</h2>
<small>{{ forgetting.n }} Self-Instruct seed tasks (Wang et al. 2023, Apache-2.0); KL is the mean per-token KL(base‖tuned) over the human answers.</small>
<table><tr><th>model</th><th>general-text perplexity</th><th>perplexity of human answers</th><th>chrF of its answers</th><th>KL(base‖tuned)</th><th></th></tr>
{% for r in forgetting.rows %}<tr><td>{{ r.name }}</td><td>{{ r.text_ppl }}</td><td>{{ r.answer_ppl }}</td><td>{{ r.chrf }}</td><td>{{ r.kl }}</td>
<td class="{{ 'flag' if r.flag == 'REGRESSION' else 'ok' }}">{{ r.flag }}</td></tr>{% endfor %}</table>
<table class="fail">{% for e in forgetting.examples %}<tr><td colspan="2"><b>{{ e.prompt }}</b><br>human: {{ e.human }}</td></tr>
{% for name, answer in e.answers %}<tr><td>{{ name }}</td><td>{{ answer }}</td></tr>{% endfor %}{% endfor %}</table>{% endif %}
<h2>Worst failures of {{ focus }}</h2>
<table class="fail"><tr><th>item</th><th>reference</th>{% for v in variant_names %}<th>{{ v }}</th>{% endfor %}</tr>
{% for f in failures %}<tr><td>#{{ f.index }} {{ f.question }}{% if f.meta %}<br><small>{{ f.meta }}</small>{% endif %}</td><td>{{ f.reference }}</td>
{% for name, answer, ok in f.answers %}<td>{% if ok %}<span class="ok">✓</span> {% endif %}{{ answer }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Metrics</h2><ul>{% for name, help in metric_help %}<li><b>{{ name }}</b>: {{ help }}</li>{% endfor %}
<li><b>ref. perplexity</b>: perplexity of the reference answers given each variant's prompt (lower is better)</li>
<li>cost columns: generation latency per item and peak resident memory measured here; training time, trained tokens and trainable parameters from the run folder</li></ul>
</body></html>
"""


def _bold(text: str) -> Any:
    """**x** → <b>x</b> after escaping: the verdict lines are shared with the Markdown report."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", str(escape(text))))


def write_report(report: EvalReport, out_dir: str | Path, worst: int = 8) -> dict[str, Path]:
    out = Path(out_dir)
    plots = {"headline": plot_headline(report), "metrics": plot_metrics(report)}
    loss = plot_loss_curves(report)
    if loss is not None:
        plots["loss"] = loss
    for name, png in plots.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", png)
    context = view(report, worst)
    context["has_loss"] = loss is not None
    context["plots"] = [(name, base64.b64encode(png).decode()) for name, png in plots.items()]
    md_env = jinja2.Environment(autoescape=False, keep_trailing_newline=True)
    html_env = jinja2.Environment(autoescape=True)
    html_env.filters["bold"] = _bold
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_json(paths["json"], report.to_json(), indent=1)
    atomic_write_text(paths["md"], md_env.from_string(MARKDOWN).render(**context))
    atomic_write_text(paths["html"], html_env.from_string(HTML).render(**context))
    return paths
