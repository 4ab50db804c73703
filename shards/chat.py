"""Fine-tuning records rendered with the model's own chat template.

A model imported from Hugging Face (Qwen2.5, Llama 3, DeepSeek-R1-Distill) was instruction-tuned
on its chat template; fine-tuning it on another layout teaches the wrong format. When the shards
stage's tokenizer carries a chat template (``tokenizer_config.json`` ``chat_template``, or a
``chat_template.jinja`` file) and ``shards.chat_template`` is ``auto`` or ``tokenizer``, every
fine-tuning record (a dialogue or instruction record: it has ``meta.segments`` or raw turns) is
rendered with it through ``transformers``' ``apply_chat_template``:

* the messages come from the record's dialogue tree (``meta.dialogue``, the main path, each
  turn's side as the clean stage decided it: response turns are ``assistant``, a ``system``
  turn stays ``system``, other prompt turns are ``user``), from its instruction (``user``:
  instruction and input; ``assistant``: output), or from raw ``turns``/``messages``/
  ``conversations`` when the record reaches this stage uncleaned;
* the loss covers exactly each assistant message as the template writes it: from the end of
  the prompt the template builds for it (``add_generation_prompt=True`` over the messages
  before it) to the end of the conversation including it, without trailing whitespace. That
  is the reply and the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``), so the
  model learns to stop; role headers, system and user text are context.

A template whose renderings of successive prefixes do not extend each other cannot mark the
spans; such a record is rejected as ``chat_template_mismatch`` (never silently trained on a
wrong mask). Without a template (or with ``chat_template: default``) records keep the
project's documented template (see ``shards/sft.py`` and ``etl/io/dialogue.py``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shards.sft import PROMPT, RESPONSE

CHAT_TEMPLATE_CHOICES = ("auto", "tokenizer", "default")


def has_chat_template(path_or_hub_id: str) -> bool | None:
    """Whether a local tokenizer directory carries a chat template (None: not a local directory,
    ask ``transformers``)."""
    root = Path(str(path_or_hub_id))
    if not root.is_dir():
        return None
    if (root / "chat_template.jinja").is_file() or (root / "chat_template.json").is_file():
        return True
    config = root / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except (ValueError, OSError):
            return False
    return False


def record_messages(text: str, meta: dict[str, Any]) -> list[dict[str, str]] | None:
    """The chat messages of a fine-tuning record, or None for plain text."""
    from etl.io.dialogue import DialogueConfig, chat_turns, main_path, role_side

    nodes = meta.get("dialogue")
    if isinstance(nodes, list) and nodes and all(isinstance(n, dict) and "role" in n and "text" in n for n in nodes):
        path = main_path(nodes) if all("id" in n and "parent" in n for n in nodes) else nodes
        return [_message(n["role"], n["text"], n.get("side") or role_side(str(n["role"]), DialogueConfig())) for n in path]
    if meta.get("instruction") and meta.get("output"):
        user = str(meta["instruction"]).strip()
        if str(meta.get("input") or "").strip():
            user += "\n\n" + str(meta["input"]).strip()
        return [{"role": "user", "content": user}, {"role": "assistant", "content": str(meta["output"]).strip()}]
    if not (text and text.strip()) or not meta.get("segments"):
        turns, _, reason, _ = chat_turns(meta)
        if reason is None:
            config = DialogueConfig()
            return [_message(t["role"], t["text"], role_side(str(t["role"]), config)) for t in turns]
    return None


def _message(role: Any, text: Any, side: str | None) -> dict[str, str]:
    role = str(role)
    if role.lower() == "system":
        chat_role = "system"
    elif side == "response":
        chat_role = "assistant"
    else:
        chat_role = "user"
    return {"role": chat_role, "content": str(text)}


class ChatRenderer:
    """Renders messages with a tokenizer's chat template and marks the assistant spans."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer

    @classmethod
    def load(cls, path_or_hub_id: str, mode: str) -> ChatRenderer | None:
        """The renderer for ``shards.chat_template`` = ``mode``; None means the default template."""
        if mode not in CHAT_TEMPLATE_CHOICES:
            raise ValueError(f"shards.chat_template must be one of {list(CHAT_TEMPLATE_CHOICES)}, got {mode!r}")
        if mode == "default" or has_chat_template(path_or_hub_id) is False and mode == "auto":
            return None
        from shards.tokenizer import load_tokenizer

        tok = load_tokenizer(path_or_hub_id)
        if not getattr(tok, "chat_template", None):
            if mode == "tokenizer":
                raise ValueError(f"shards.chat_template is 'tokenizer' but tokenizer {path_or_hub_id!r} has no chat template")
            return None
        return cls(tok)

    def _render(self, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str:
        return self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)

    def render(self, messages: Sequence[dict[str, str]]) -> tuple[str | None, list[list[Any]] | None, str | None]:
        """``(text, segments, None)`` or ``(None, None, error)``; segments as in ``meta.segments``."""
        if not any(m["role"] == "assistant" for m in messages):
            return None, None, "the conversation has no assistant message to learn"
        try:
            full = self._render(messages)
            segments: list[list[Any]] = []
            pos = 0
            for i, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                before = self._render(messages[:i], generation_prompt=True)
                upto = self._render(messages[: i + 1]).rstrip()
                if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
                    return None, None, f"the template's rendering of messages[:{i + 1}] does not extend the earlier ones"
                if message["content"].strip() not in upto[len(before):]:
                    return None, None, f"assistant message {i} is not found where the template writes it"
                if len(before) > pos:
                    segments.append([pos, len(before), PROMPT])
                segments.append([len(before), len(upto), RESPONSE])
                pos = len(upto)
            if pos < len(full):
                segments.append([pos, len(full), PROMPT])
        except Exception as exc:  # noqa: BLE001 - a template error (raise_exception, undefined) is a property of the record
            return None, None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return full, segments, None
