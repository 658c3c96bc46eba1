"""Converters from common dataset layouts to datanet records.

Each converter takes an iterable of dict rows and returns validated records; a row that
does not fit raises :class:`~openledger.exceptions.SchemaError` naming the row and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from openledger.data.schemas import ChatRecord, InstructionRecord, validate_record
from openledger.exceptions import SchemaError

__all__ = [
    "from_alpaca",
    "from_openai_messages",
    "from_prompt_completion",
    "from_sharegpt",
    "read_jsonl",
]

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
}


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a UTF-8 JSONL file.

    Raises:
        SchemaError: For invalid UTF-8 or JSON, naming the line.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SchemaError(f"{path}:{number} is not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise SchemaError(
                    f"{path}:{number} must be a JSON object, got {type(row).__name__}"
                )
            yield row


def _field(row: Mapping[str, Any], name: str, index: int) -> Any:
    if not isinstance(row, Mapping):
        raise SchemaError(f"row {index} must be a dict, got {type(row).__name__}")
    if name not in row:
        raise SchemaError(f"row {index} has no {name!r} field (keys: {sorted(row)})")
    return row[name]


def from_alpaca(rows: Iterable[Mapping[str, Any]]) -> list[InstructionRecord]:
    """Convert alpaca rows ``{instruction, input, output}`` (input may be empty)."""
    out = []
    for i, row in enumerate(rows):
        fields = {
            "instruction": _field(row, "instruction", i),
            "input": row.get("input") or None,
            "response": _field(row, "output", i),
        }
        out.append(validate_record(InstructionRecord, fields, index=i))
    return out  # type: ignore[return-value]


def from_prompt_completion(rows: Iterable[Mapping[str, Any]]) -> list[InstructionRecord]:
    """Convert ``{prompt, completion}`` rows (OpenAI legacy fine-tuning JSONL)."""
    out = []
    for i, row in enumerate(rows):
        fields = {"instruction": _field(row, "prompt", i), "response": _field(row, "completion", i)}
        out.append(validate_record(InstructionRecord, fields, index=i))
    return out  # type: ignore[return-value]


def from_openai_messages(rows: Iterable[Mapping[str, Any]]) -> list[ChatRecord]:
    """Convert ``{messages: [{role, content}, ...]}`` rows (OpenAI chat fine-tuning JSONL)."""
    out = []
    for i, row in enumerate(rows):
        messages = _field(row, "messages", i)
        if not isinstance(messages, list):
            raise SchemaError(f"row {i}: messages must be a list, got {type(messages).__name__}")
        kept = [
            {"role": m.get("role"), "content": m.get("content")}
            for m in messages
            if isinstance(m, Mapping)
        ]
        out.append(validate_record(ChatRecord, {"messages": kept}, index=i))
    return out  # type: ignore[return-value]


def from_sharegpt(rows: Iterable[Mapping[str, Any]]) -> list[ChatRecord]:
    """Convert ShareGPT rows ``{conversations: [{from, value}, ...]}`` (human/gpt roles)."""
    out = []
    for i, row in enumerate(rows):
        turns = _field(row, "conversations", i)
        if not isinstance(turns, list):
            raise SchemaError(f"row {i}: conversations must be a list, got {type(turns).__name__}")
        messages = []
        for j, turn in enumerate(turns):
            role = (
                _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
                if isinstance(turn, Mapping)
                else None
            )
            if role is None:
                raise SchemaError(
                    f"row {i}: conversations[{j}] has an unknown 'from' role {turn!r}"
                )
            messages.append({"role": role, "content": turn.get("value")})
        out.append(validate_record(ChatRecord, {"messages": messages}, index=i))
    return out  # type: ignore[return-value]
