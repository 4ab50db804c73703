"""Fine-tuning records: the one prompt/response template and segment-to-loss-mask mapping.

The clean stage flattens instruction and dialogue records into ``text`` and records
``meta["segments"] = [[start_char, end_char, "prompt"|"response"], ...]``. Raw
instruction/input/output records (uncleaned SFT JSONL) are flattened here with the same
template (:func:`render_instruction`), so this stage also works on uncleaned data.
Loss is taken only on tokens that overlap a ``response`` segment.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PROMPT, RESPONSE = "prompt", "response"


def render_instruction(instruction: str, input_text: str, output: str) -> tuple[str, list[list[Any]]]:
    """The documented instruction template and its segments.

    ``"<instruction>\\n\\n<input>\\n\\n"`` is the prompt (the input block only when non-empty)
    and ``"<output>"`` is the response.
    """
    prompt = instruction.strip()
    if input_text and input_text.strip():
        prompt += "\n\n" + input_text.strip()
    prompt += "\n\n"
    text = prompt + output.strip()
    return text, [[0, len(prompt), PROMPT], [len(prompt), len(text), RESPONSE]]


def render_turns(turns: Sequence[dict[str, Any]]) -> tuple[str, list[list[Any]]]:
    """A dialogue (list of ``{role, text}``, in order) as ``role: text`` lines.

    Turns of a response role (``assistant``, ``gpt``... : ``etl.io.dialogue.DEFAULT_RESPONSE_ROLES``)
    are responses; when no turn has one, every speaker but the first answers. ``role: `` labels
    count as prompt. Used only when a dialogue reaches this stage uncleaned; the clean stage's
    dialogue trees are preferred.
    """
    from etl.io.dialogue import DEFAULT_RESPONSE_ROLES

    responders = {r.lower() for r in DEFAULT_RESPONSE_ROLES}
    by_role = any(str(t.get("role", "")).lower() in responders for t in turns)
    first_role = turns[0].get("role") if turns else None
    text, segments = "", []
    for turn in turns:
        label = f"{turn.get('role', '')}: "
        body = str(turn.get("text", "")).strip()
        segments.append([len(text), len(text) + len(label), PROMPT])
        start = len(text) + len(label)
        response = str(turn.get("role", "")).lower() in responders if by_role else turn.get("role") != first_role
        segments.append([start, start + len(body), RESPONSE if response else PROMPT])
        text += label + body + "\n"
    return text.rstrip("\n"), segments


def sft_text_and_segments(text: str, meta: dict[str, Any]) -> tuple[str, list | None]:
    """The text to tokenise and its segments (None: not a fine-tuning record, train on all)."""
    segments = meta.get("segments")
    if text and text.strip():
        return text, segments if segments else None
    if meta.get("instruction") or meta.get("output"):
        return render_instruction(str(meta.get("instruction") or ""), str(meta.get("input") or ""), str(meta.get("output") or ""))
    from etl.io.dialogue import chat_turns

    turns, _, reason, _ = chat_turns(meta)  # turns, OpenAI/HF messages or ShareGPT conversations
    if reason is None and all(isinstance(t, dict) for t in turns):
        return render_turns(turns)
    return text, None


def target_mask_from_segments(offsets: np.ndarray, segments: Sequence[Sequence[Any]]) -> np.ndarray:
    """uint8 per token: 1 if the token's characters overlap a ``response`` segment.

    ``offsets`` is the tokenizer's ``[num_tokens, 2]`` character offset mapping.
    """
    mask = np.zeros(len(offsets), dtype=np.uint8)
    if len(offsets) == 0:
        return mask
    starts, ends = offsets[:, 0], offsets[:, 1]
    for seg_start, seg_end, kind in segments:
        if kind != RESPONSE:
            continue
        mask |= ((starts < seg_end) & (ends > seg_start)).astype(np.uint8)
    return mask
