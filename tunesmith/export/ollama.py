"""`--to ollama`: a Modelfile beside the GGUF: the chat template in Go template form, stop tokens, system prompt.

Ollama templates are Go `text/template`; Hugging Face chat templates are Jinja. No library translates one into
the other, so this file derives the template from what the Jinja template renders: each role's text before and
after the message content, and the generation prompt. The result is accepted only if re-assembling those parts
reproduces the Jinja rendering exactly on a set of conversations (system/no system, one and several turns);
a template that is not a per-message wrapper (dates, tools, conditionals on content) is reported, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.records import Message, TunesmithError

ROLES = ("system", "user", "assistant")
_SENTINEL = "\u2063TUNESMITH\u2063"


@dataclass
class ChatParts:
    prefix: dict[str, str]  # role -> text before the content
    suffix: dict[str, str]  # role -> text after the content
    generation: str  # the assistant header that starts an answer

    def render(self, messages: list[Message]) -> str:
        """What the Go template below renders (with add_generation_prompt)."""
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return body + self.generation


def _render(tokenizer, messages: list[Message], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


CHECK_CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1\nline two"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
]


def chat_parts(tokenizer) -> ChatParts:
    if not getattr(tokenizer, "chat_template", None):
        raise TunesmithError("the tokenizer has no chat template; Ollama would not know how to prompt the model")
    prefix, suffix = {}, {}
    for role in ROLES:
        messages = [{"role": role, "content": _SENTINEL}]
        if role == "assistant":  # many templates want a user turn first
            messages = [{"role": "user", "content": "x"}] + messages
        text = _render(tokenizer, messages, generation=False)
        if role == "assistant":
            text = text[len(_render(tokenizer, messages[:1], generation=False)):]
        if text.count(_SENTINEL) != 1:
            raise TunesmithError(f"the chat template does not render a {role} message's content once")
        prefix[role], suffix[role] = text.split(_SENTINEL)
    one = [{"role": "user", "content": "x"}]
    plain, with_generation = _render(tokenizer, one, False), _render(tokenizer, one, True)
    if not with_generation.startswith(plain):
        raise TunesmithError("the chat template's generation prompt is not a suffix of the conversation")
    parts = ChatParts(prefix, suffix, with_generation[len(plain):])
    for conversation in CHECK_CONVERSATIONS:
        if parts.render(conversation) != _render(tokenizer, conversation, True):
            raise TunesmithError(
                "the chat template is not a plain per-message wrapper (it renders some conversations differently "
                "from prefix + content + suffix per message), so it cannot be written as an Ollama template "
                "automatically; the GGUF still carries the Jinja template")
    return parts


def _go_text(text: str) -> str:
    """Literal text inside a Go template: only `{{` needs escaping."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(parts: ChatParts) -> str:
    """Go template form of `parts` (no whitespace trimming: every character of the parts is literal)."""
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{_go_text(parts.prefix[role])}{{{{ .Content }}}}{_go_text(parts.suffix[role])}"
        for i, role in enumerate(ROLES))
    return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{_go_text(parts.generation)}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, tokenizer, stop_tokens: list[str], system_prompt: str | None = None) -> str:
    parts = chat_parts(tokenizer)
    template = go_template(parts)
    if '"""' in template:
        raise TunesmithError('the chat template contains """, which a Modelfile TEMPLATE cannot hold')
    lines = [f"# Written by `tunesmith export --to ollama`. Create the model with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stop_tokens]
    return "\n".join(lines) + "\n"
