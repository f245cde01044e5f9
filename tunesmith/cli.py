"""The `tunesmith` command: one table from verb to the function that does it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.records import TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt a pretrained LLM to your domain, and prove with numbers whether it was worth it.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and prepare data.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

ConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML run config")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: section.key=value (repeatable)")]


def _config(config: Path | None, overrides: list[str] | None, data: str | None = None):
    from tunesmith.config import load_config

    base = {"data": {"train": data}} if data else None
    if config is None and not data:
        raise TunesmithError("give a config file, or --data FILE")
    return load_config(config, overrides or [], base=base)


@app.command("train")
def train_cmd(config: ConfigArg = None, overrides: SetOpt = None,
              resume: Annotated[bool, typer.Option("--resume", help="Continue the run in output.dir from its last checkpoint")] = False):
    """Fine-tune a model as the config says."""
    from tunesmith.train.run import train

    train(_config(config, overrides), resume=resume)


@app.command("generate")
def generate_cmd(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder (base model + its adapter)")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder (default: the embedded SmolLM2)")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A user message (repeatable)")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="File of prompts: JSONL (messages/prompt) or lines")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt for every prompt")] = None,
    max_new_tokens: int = 256, batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32")] = "auto",
    guardrails: Annotated[Optional[Path], typer.Option(help="A guardrails YAML (input/output rails, structured output)")] = None,
):
    """Answer prompts with a base model or a trained run (batched; greedy unless --temperature > 0)."""
    import json

    from tunesmith.generate import generate_chat, load_for_inference, read_prompts

    conversations = [[{"role": "user", "content": p}] for p in prompt or []]
    if input:
        conversations += read_prompts(input)
    if not conversations:
        raise TunesmithError("nothing to answer: give --prompt TEXT or --input FILE")
    if system:
        conversations = [[{"role": "system", "content": system}] + c for c in conversations]
    model_obj, tokenizer = load_for_inference(run, model)
    if guardrails:
        from tunesmith.guardrails import Guard, generate_guarded, load_guardrails

        guard = Guard(load_guardrails(guardrails), tokenizer, model_obj.config.vocab_size)
        outputs = generate_guarded(model_obj, tokenizer, guard, conversations, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, temperature=temperature, top_p=top_p, seed=seed,
                                   precision=precision)
        for conv, out in zip(conversations, outputs):
            print(json.dumps({"prompt": conv[-1]["content"], "answer": out.text, "blocked": out.blocked,
                              "rails": [d.to_dict() for d in out.decisions]}, ensure_ascii=False))
        return
    answers = generate_chat(model_obj, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            temperature=temperature, top_p=top_p, seed=seed, precision=precision)
    for conv, answer in zip(conversations, answers):
        print(json.dumps({"prompt": conv[-1]["content"], "answer": answer}, ensure_ascii=False))


@app.command("chat")
def chat_cmd(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder")] = None,
    system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
    guardrails: Annotated[Optional[Path], typer.Option(help="A guardrails YAML (input/output rails, structured output)")] = None,
):
    """Talk to a model in the terminal; the conversation is kept; empty line or Ctrl-D ends."""
    from tunesmith.generate import generate_chat, load_for_inference

    model_obj, tokenizer = load_for_inference(run, model)
    guard = None
    if guardrails:
        from tunesmith.guardrails import Guard, generate_guarded, load_guardrails

        guard = Guard(load_guardrails(guardrails), tokenizer, model_obj.config.vocab_size)
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        if guard is not None:
            reply = generate_guarded(model_obj, tokenizer, guard, [history], max_new_tokens=max_new_tokens,
                                     temperature=temperature, show_progress=False)[0].text
        else:
            reply = generate_chat(model_obj, tokenizer, [history], max_new_tokens=max_new_tokens,
                                  temperature=temperature, show_progress=False)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A trained run folder")],
    to: Annotated[str, typer.Option("--to", help="hf (merged safetensors) | peft (the adapter alone) | gguf | ollama (GGUF + Modelfile)")],
    quant: Annotated[Optional[str], typer.Option(help="hf: bf16|f16|f32. gguf/ollama: auto (the smallest level that passes parity), "
                                                     "f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, or K-quants (q4_k_m ...) with llama-cpp-python; "
                                                     "a comma list is tried in order")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/export/FORMAT)")] = None,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Compare the artifact's greedy answers with the run's (parity.json)")] = True,
    n: Annotated[int, typer.Option("-n", help="Parity prompts (the first N of data.valid, else of data.train)")] = 32,
    prompts: Annotated[Optional[Path], typer.Option(help="Parity prompts from this data file instead (the run's data format)")] = None,
    max_new_tokens: int = 128,
    min_identical: Annotated[float, typer.Option(help="Share of identical answers needed to pass parity")] = 0.9,
    backend: Annotated[str, typer.Option(help="Who answers for a GGUF in the parity check: transformers or llama.cpp")] = "transformers",
    untie_embeddings: Annotated[bool, typer.Option("--untie-embeddings", help="Allow merging an adapter that changes tied embeddings by untying them")] = False,
    precision: Annotated[str, typer.Option(help="Parity generation precision for both sides: fp32 (default), bf16 or auto")] = "fp32",
):
    """Export a run to the runtimes users run, and check that the export answers like the run."""
    from tunesmith.export import ExportOptions, export_run

    if backend not in ("transformers", "llama.cpp"):
        raise TunesmithError("--backend must be transformers or llama.cpp")
    opts = ExportOptions(quant=quant, out=out, parity=parity, n=n, max_new_tokens=max_new_tokens, prompts=prompts,
                         min_identical=min_identical, backend=backend, untie_embeddings=untie_embeddings,
                         precision=precision)
    result = export_run(run, to, opts)
    level = f" ({result.quant})" if result.quant else ""
    console.print(f"[green]Exported[/] {to}{level} to {result.out}: {', '.join(p.name for p in result.files)}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.parity and not result.parity_passed:
        console.print(f"[bold red]Parity failed[/]: the export answers differently from the run on some prompts "
                      f"(see {result.out / 'parity.json'}); try a larger --quant, or report it if f16/hf fails")
        raise typer.Exit(1)


@app.command("merge")
def merge_cmd(run: Path, out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/merged)")] = None,
              quant: Annotated[Optional[str], typer.Option(help="bf16 (default), f16 or f32")] = None, precision: str = "fp32"):
    """Alias of `export RUN --to hf --out RUN/merged`: the adapter merged into a plain transformers folder."""
    export_cmd(run, "hf", quant=quant, out=out or run / "merged", precision=precision)


@data_app.command("show")
def data_show_cmd(config: ConfigArg = None, overrides: SetOpt = None,
                  data: Annotated[Optional[str], typer.Option(help="A data file (instead of a config)")] = None,
                  n: Annotated[int, typer.Option("-n", help="Examples to render")] = 3):
    """Render examples as the trainer sees them: trained tokens highlighted, with length and masking stats."""
    from tunesmith.data.show import show

    show(_config(config, overrides, data), n=n)


# Plug-in verbs: each package adds its own commands (`tunesmith data ingest ...`, `tunesmith eval`).
from tunesmith.data.prep.cli import register as _register_data_prep  # noqa: E402
from tunesmith.eval.cli import register as _register_eval  # noqa: E402
from tunesmith.serve.cli import register as _register_serve  # noqa: E402

_register_data_prep(data_app)
_register_eval(app)
_register_serve(app)


def main() -> None:
    try:
        app()
    except TunesmithError as e:
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: checkpoints already written are complete; continue with --resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
