"""Dialogue trees and instruction records flattened into training text with segments.

Input forms (the reader puts non-column fields into ``meta``):

* dialogues: ``meta.turns = [{"role", "text", ...}, ...]``; a turn may carry ``id`` and
  ``parent`` (a branching tree, as in OpenAssistant); without them each turn's parent is the
  previous turn.
* chat records in the field's two common layouts, read natively (:func:`chat_turns`):
  ShareGPT ``conversations = [{"from": "human"|"gpt"|"system", "value": ...}]`` and OpenAI /
  Hugging Face ``messages = [{"role": "system"|"user"|"assistant"|"tool", "content": ...}]``
  (``content`` a string or a list of ``{"type": "text", "text": ...}`` parts). Speaker names
  are mapped to ``user``/``assistant``/``system``/``tool`` (:data:`ROLE_ALIASES`, case
  insensitive); a name not in the map is kept and, unless it is a configured role, dropped as
  ``dialogue_unknown_role``. A turn that is not an object, or whose text is not a string (a
  ``null`` content, an image part), is ``dialogue_bad_turn`` with ``meta.error`` naming it.
* instructions (the seeds' SFT format): ``meta.instruction`` (+ optional ``meta.input``) and
  ``meta.output``.

Validation (each its own drop reason): ``dialogue_no_turns``, ``dialogue_empty_turn``,
``dialogue_unknown_role`` (a role in neither ``prompt_roles`` nor ``response_roles``,
compared case-insensitively), ``dialogue_not_alternating`` (two consecutive turns on the same
side, prompt or response, when ``require_alternation``), ``dialogue_bad_parent`` (a parent id
that is not an earlier turn), ``instruction_missing_output``, ``dialogue_bad_turn`` (a turn that is not a role and a string).

The template (documented in docs/clean.md, "Design choices")::

    dialogue:     "{role}: {text}" per turn on the path root -> last leaf, joined by "\\n"
    instruction:  "{instruction}\\n{input}\\n" (input line only when non-empty) + "{output}"

Each turn's text is normalised (and PII-masked when enabled) *before* flattening.  The step
records ``meta.segments = [[start, end, "prompt"|"response"], ...]``: character offsets into
the final ``text`` that cover it exactly, adjacent spans of one kind merged; "response" is the
text a fine-tuned model should learn to produce (the response turns' text and the newline
ending them, or the instruction's output).  Role labels ``"B: "`` belong to the prompt.
``meta.dialogue = [{"id", "parent", "role", "text"}, ...]`` keeps the tree; ``meta.turns`` is
removed (the tree replaces it).  Later steps that rewrite text skip documents with segments,
so the offsets stay valid.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etl.core.document import Document

DEFAULT_PROMPT_ROLES = ("a", "user", "human", "patient", "guest_family", "guest_clinician", "system", "question", "tool")
DEFAULT_RESPONSE_ROLES = ("b", "assistant", "gpt", "bot", "doctor", "answer")
#: Speaker names of ShareGPT / OpenAI-style chat data -> the chat roles (keys lower case).
ROLE_ALIASES = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "model": "assistant", "bot": "assistant", "claude": "assistant",
    "system": "system", "developer": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
#: meta keys holding a chat record, in the order they are looked for, and their format names.
CHAT_KEYS = (("turns", "turns"), ("messages", "messages"), ("conversations", "sharegpt"))


@dataclass(frozen=True, kw_only=True)
class DialogueConfig:
    """The ``clean.dialogue`` section."""

    enabled: bool = True
    """Flatten dialogue and instruction records (others pass unchanged)."""
    prompt_roles: tuple[str, ...] = DEFAULT_PROMPT_ROLES
    """Roles (case-insensitive) whose turns are context.  KdConv: A; MTS-Dialog: patient and guests."""
    response_roles: tuple[str, ...] = DEFAULT_RESPONSE_ROLES
    """Roles whose turns the model learns to produce.  KdConv: B (the knowledgeable side); MTS-Dialog: doctor."""
    require_alternation: bool = False
    """Drop dialogues where two consecutive turns are on the same side (``dialogue_not_alternating``).
    Off by default: 6% of MTS-Dialog has a patient and a relative speaking in a row, which is
    real conversation; such turns are counted in ``meta.num_same_side_turns`` instead."""
    min_turns: int = 2
    """Turns on the flattened path; fewer is ``dialogue_too_few_turns``."""
    turn_template: str = "{role}: {text}"
    """How one turn is written; must contain ``{role}`` before ``{text}`` and end with ``{text}``."""
    turn_separator: str = "\n"
    """Between turns; it ends the preceding turn's segment."""

    def __post_init__(self) -> None:
        overlap = {r.lower() for r in self.prompt_roles} & {r.lower() for r in self.response_roles}
        if overlap:
            raise ValueError(f"clean.dialogue: roles in both prompt_roles and response_roles: {sorted(overlap)}")
        if not self.turn_template.endswith("{text}") or "{role}" not in self.turn_template:
            raise ValueError(f"clean.dialogue.turn_template must contain {{role}} and end with {{text}}, got {self.turn_template!r}")
        if self.min_turns < 1:
            raise ValueError(f"clean.dialogue.min_turns must be >= 1, got {self.min_turns}")


TextFn = Callable[[str], str]


def role_side(role: str, config: DialogueConfig) -> str | None:
    """``"response"`` for a response role (``config.response_roles``), ``"prompt"`` for a prompt role, else None."""
    low = role.lower()
    if low in {r.lower() for r in config.response_roles}:
        return "response"
    if low in {r.lower() for r in config.prompt_roles}:
        return "prompt"
    return None


def _content_text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of an OpenAI content list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                                    for p in content):
        return "\n".join(p["text"] for p in content)
    return None


def chat_turns(meta: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None, str | None, str | None]:
    """``(turns, format, reason, error)``: the record's dialogue as ``[{"role", "text", ...}]``
    from ``turns``, ``messages`` or ``conversations`` (first found), or a drop reason and what
    is wrong. Roles of ``messages``/``conversations`` go through :data:`ROLE_ALIASES`."""
    for key, fmt in CHAT_KEYS:  # noqa: B007 - fmt is the format of the key found (used after the break)
        if key in meta:
            raw = meta[key]
            break
    else:
        return None, None, "dialogue_no_turns", "no turns, messages or conversations"
    if not isinstance(raw, list) or not raw:
        return None, fmt, "dialogue_no_turns", f"'{key}' must be a non-empty list, got {type(raw).__name__}"
    if fmt == "turns":
        return raw, fmt, None, None
    role_key, text_key = ("role", "content") if fmt == "messages" else ("from", "value")
    turns = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            return None, fmt, "dialogue_bad_turn", f"{key}[{i}] must be an object, got {type(item).__name__}"
        role, text = item.get(role_key), _content_text(item.get(text_key))
        if not isinstance(role, str):
            return None, fmt, "dialogue_bad_turn", f"{key}[{i}].{role_key} must be a string, got {type(role).__name__}"
        if text is None:
            got = item.get(text_key)
            what = "a list with non-text parts" if isinstance(got, list) else type(got).__name__
            return None, fmt, "dialogue_bad_turn", f"{key}[{i}].{text_key} must be a string (or text parts), got {what}"
        turn = {k: v for k, v in item.items() if k not in (role_key, text_key)}
        turn.update(role=ROLE_ALIASES.get(role.strip().lower(), role), text=text)
        if turn["role"] != role:
            turn["source_role"] = role
        turns.append(turn)
    return turns, fmt, None, None


def build_tree(turns: list[Any], clean_text: TextFn) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``(tree nodes, None)`` or ``(None, reason)`` from raw turns; texts pass through ``clean_text``."""
    if not isinstance(turns, list) or not turns:
        return None, "dialogue_no_turns"
    nodes: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str) or not isinstance(turn.get("role"), str):
            return None, "dialogue_bad_turn"
        text = clean_text(turn["text"])
        if not text:
            return None, "dialogue_empty_turn"
        node_id = str(turn.get("id", i))
        parent = turn.get("parent", nodes[-1]["id"] if nodes else None)
        parent = None if parent is None else str(parent)
        if parent is not None and parent not in ids:
            return None, "dialogue_bad_parent"
        ids.add(node_id)
        nodes.append({"id": node_id, "parent": parent, "role": turn["role"], "text": text})
    return nodes, None


def main_path(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Root to leaf following each node's first child (the whole list for a linear dialogue)."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for node in nodes:
        children.setdefault(node["parent"], []).append(node)
    path, parent = [], None
    while children.get(parent):
        node = children[parent][0]
        path.append(node)
        parent = node["id"]
    return path


def _append(parts: list[str], segments: list[list], piece: str, kind: str, pos: int) -> int:
    if not piece:
        return pos
    parts.append(piece)
    end = pos + len(piece)
    if segments and segments[-1][2] == kind and segments[-1][1] == pos:
        segments[-1][1] = end
    else:
        segments.append([pos, end, kind])
    return end


def flatten_dialogue(path: list[dict[str, Any]], config: DialogueConfig) -> tuple[str | None, list[list] | None, str | None]:
    """``(text, segments, None)`` for a validated path, or ``(None, None, reason)``."""
    if len(path) < config.min_turns:
        return None, None, "dialogue_too_few_turns"
    label_tpl = config.turn_template[: -len("{text}")]
    parts: list[str] = []
    segments: list[list] = []
    pos, last_side = 0, None
    for i, node in enumerate(path):
        side = role_side(node["role"], config)
        if side is None:
            return None, None, "dialogue_unknown_role"
        if config.require_alternation and side == last_side:
            return None, None, "dialogue_not_alternating"
        last_side = side
        pos = _append(parts, segments, label_tpl.format(role=node["role"]), "prompt", pos)
        sep = config.turn_separator if i < len(path) - 1 else ""
        pos = _append(parts, segments, node["text"] + sep, side, pos)
    return "".join(parts), segments, None


def count_same_side(path: list[dict[str, Any]], config: DialogueConfig) -> int:
    """Consecutive turn pairs on the same side (prompt or response)."""
    sides = [role_side(node["role"], config) for node in path]
    return sum(1 for a, b in zip(sides, sides[1:]) if a == b)


def flatten_instruction(meta: dict[str, Any], clean_text: TextFn) -> tuple[str | None, list[list] | None, str | None]:
    """Instruction/input/output to ``(text, segments, None)`` or ``(None, None, reason)``."""
    instruction = clean_text(str(meta.get("instruction") or ""))
    extra = clean_text(str(meta.get("input") or ""))
    output = clean_text(str(meta.get("output") or ""))
    if not instruction:
        return None, None, "instruction_empty"
    if not output:
        return None, None, "instruction_missing_output"
    prompt = instruction + "\n" + (extra + "\n" if extra else "")
    return prompt + output, [[0, len(prompt), "prompt"], [len(prompt), len(prompt) + len(output), "response"]], None


def is_structured(doc: Document) -> bool:
    """Whether ``doc`` is a dialogue (turns, messages, conversations) or instruction record still to be flattened."""
    return "segments" not in doc.meta and (any(key in doc.meta for key, _ in CHAT_KEYS) or "instruction" in doc.meta)


def flatten_document(doc: Document, config: DialogueConfig, clean_text: TextFn) -> str | None:
    """Turn a dialogue/instruction record into text + segments in place; answer a reason or None."""
    if not config.enabled or not is_structured(doc):
        return None
    if any(key in doc.meta for key, _ in CHAT_KEYS):
        turns, fmt, reason, error = chat_turns(doc.meta)
        if reason:
            doc.meta["error"] = error
            return reason
        nodes, reason = build_tree(turns, clean_text)
        if reason:
            return reason
        path = main_path(nodes)
        text, segments, reason = flatten_dialogue(path, config)
        if reason:
            return reason
        num_same_side = count_same_side(path, config)
        if num_same_side:
            doc.meta["num_same_side_turns"] = num_same_side
        for node in nodes:
            node["side"] = role_side(node["role"], config)
        doc.meta["dialogue"] = nodes
        for key, _ in CHAT_KEYS:
            doc.meta.pop(key, None)
        doc.meta["format"] = "dialogue"
        doc.meta["source_format"] = fmt
    else:
        text, segments, reason = flatten_instruction(doc.meta, clean_text)
        if reason:
            return reason
        doc.meta["format"] = "instruction"
    doc.text = text
    doc.meta["segments"] = segments
    return None
