"""Records -> token ids and labels, with the loss only on what the model should learn to say.

Chat-like records (instruction, chat, classification, or any record with a ``to_messages()``
method) go through the chat template. The loss covers each assistant turn's content up to
and including the tokenizer's EOS token; prompts, system text, role headers and whatever the
template writes after EOS carry the label ``-100``. Plain :class:`~openledger.data.TextRecord`
text is learnt whole, with EOS appended.

How the assistant spans are found (no per-template code)::

    before = render(messages[:i], add_generation_prompt=True)   # prompt up to turn i
    upto   = render(messages[: i + 1])                          # ... and turn i itself
    span_i = [len(before), index of EOS in upto after the content + len(EOS))

Both renderings must be prefixes of the full rendering (true of ChatML, Llama 3, Mistral and
most templates); tokens whose first character falls inside a span are learnt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openledger.data import ChatRecord, ClassificationRecord, InstructionRecord, Record, TextRecord
from openledger.exceptions import ChatTemplateError, TrainDataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "FormattedData",
    "check_eos",
    "check_formattable",
    "format_record",
    "format_records",
    "record_messages",
]

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (the value transformers' loss ignores)."""

Messages = list[dict[str, str]]
_PROBE: Messages = [
    {"role": "user", "content": "Say hello."},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Again."},
    {"role": "assistant", "content": "Hello again."},
]


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenised training sequence.

    Attributes:
        input_ids: Token ids.
        labels: Target ids, :data:`IGNORE_INDEX` where no loss is taken.
        records: Indices of the source records it holds (several when packed).
        position_ids: Per-token positions restarting at each packed example, else ``None``.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    records: tuple[int, ...]
    position_ids: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class FormattedData:
    """The outcome of :func:`format_records`.

    Attributes:
        examples: Examples that fit ``max_length`` and have at least one learnt token.
        num_too_long: Records dropped because their example exceeds ``max_length``.
        num_no_target: Records dropped because nothing in them is learnt.
        longest: Length in tokens of the longest formatted record (dropped ones included).
    """

    examples: list[Example]
    num_too_long: int
    num_no_target: int
    longest: int


def record_messages(record: Record) -> Messages | None:
    """Return the chat messages a record trains on, or ``None`` for plain text.

    Instruction records become ``user: instruction [+ blank line + input]`` and
    ``assistant: response``; classification records ``user: text``, ``assistant: label``.

    Raises:
        TrainDataError: If the record's schema has no formatting (add ``to_messages()``).
    """
    if isinstance(record, TextRecord):
        return None
    if isinstance(record, InstructionRecord):
        prompt = (
            record.instruction if not record.input else f"{record.instruction}\n\n{record.input}"
        )
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": record.response},
        ]
    if isinstance(record, ChatRecord):
        return [{"role": m.role, "content": m.content} for m in record.messages]
    if isinstance(record, ClassificationRecord):
        return [
            {"role": "user", "content": record.text},
            {"role": "assistant", "content": record.label},
        ]
    to_messages: Callable[[], Any] | None = getattr(record, "to_messages", None)
    if callable(to_messages):
        return [dict(m) for m in to_messages()]
    raise TrainDataError(
        f"records of schema {record.schema_id!r} ({type(record).__name__}) cannot be formatted "
        "for training: use a built-in schema or give the class a to_messages() method"
    )


def check_formattable(schema: type[Record]) -> None:
    """Raise before any work if records of ``schema`` cannot be formatted.

    Raises:
        TrainDataError: Naming the schema.
    """
    builtin = (TextRecord, InstructionRecord, ChatRecord, ClassificationRecord)
    if issubclass(schema, builtin) or callable(getattr(schema, "to_messages", None)):
        return
    raise TrainDataError(
        f"records of schema {schema.schema_id!r} ({schema.__name__}) cannot be formatted for "
        "training: use a built-in schema or give the class a to_messages() method"
    )


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, template: str | None, gen: bool
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen, chat_template=template
        )
    except (ValueError, TypeError) as exc:
        raise ChatTemplateError(
            f"the chat template cannot render a conversation ({exc}); set the recipe's "
            "chat_template field to a Jinja template"
        ) from None
    return str(text)


def _eos(tokenizer: PreTrainedTokenizerBase) -> str:
    eos = tokenizer.eos_token
    if not isinstance(eos, str) or not eos:
        raise ChatTemplateError("the tokenizer has no EOS token; the model could never stop")
    return eos


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, template: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and find the character span of every assistant turn.

    Returns:
        ``(text, spans)``: the full rendering and one ``[start, end)`` per assistant turn,
        ending just after the EOS token that closes it.

    Raises:
        ChatTemplateError: If the template is not prefix-stable or a turn does not end
            with the tokenizer's EOS.
    """
    eos = _eos(tokenizer)
    full = _render(tokenizer, messages, template, gen=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], template, gen=True)
        upto = _render(tokenizer, messages[: i + 1], template, gen=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ChatTemplateError(
                "the chat template renders a conversation differently from its prefixes, so "
                "assistant turns cannot be located; set the recipe's chat_template field"
            )
        content_at = upto.find(message["content"], len(before))
        end = upto.find(eos, max(content_at, len(before)) + len(message["content"]))
        if content_at < 0 or end < 0:
            raise ChatTemplateError(
                f"the chat template does not end assistant turns with the tokenizer's EOS "
                f"{eos!r}: a model trained on it would never stop. Use a template that writes "
                "EOS after each assistant message (recipe field chat_template)"
            )
        spans.append((len(before), end + len(eos)))
    return full, spans


def check_eos(tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None) -> None:
    """Check, before training, that the template ends every assistant turn with EOS.

    Raises:
        ChatTemplateError: If it does not (or the tokenizer has no template or no EOS).
    """
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template; set the recipe's chat_template field"
        )
    assistant_spans(tokenizer, [dict(m) for m in _PROBE], chat_template)


def _tokenise_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, template: str | None
) -> tuple[list[int], list[int]]:
    text, spans = assistant_spans(tokenizer, messages, template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for j, (start, _) in enumerate(encoded["offset_mapping"]):
        if any(a <= start < b for a, b in spans):
            labels[j] = ids[j]
    return ids, labels


def format_record(
    record: Record, tokenizer: PreTrainedTokenizerBase, *, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """Tokenise one record.

    Returns:
        ``(input_ids, labels)`` with :data:`IGNORE_INDEX` on tokens that are not learnt.

    Raises:
        TrainDataError: If the record cannot be formatted.
        ChatTemplateError: If the template cannot be used (see :func:`assistant_spans`).
    """
    messages = record_messages(record)
    if messages is not None:
        return _tokenise_chat(tokenizer, messages, chat_template)
    ids = list(tokenizer(record.text, add_special_tokens=True)["input_ids"])  # type: ignore[attr-defined]
    ids.append(int(tokenizer.convert_tokens_to_ids(_eos(tokenizer))))  # type: ignore[arg-type]
    return ids, list(ids)


def format_records(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    chat_template: str | None = None,
) -> FormattedData:
    """Tokenise records, dropping those longer than ``max_length`` or with nothing to learn.

    Records are dropped rather than truncated: a cut-off response would teach the model to
    stop mid-answer, or never to stop.

    Raises:
        TrainDataError: If no record is left (the message gives the longest length).
    """
    examples: list[Example] = []
    too_long = no_target = longest = 0
    for index, record in enumerate(records):
        ids, labels = format_record(record, tokenizer, chat_template=chat_template)
        longest = max(longest, len(ids))
        if len(ids) > max_length:
            too_long += 1
        elif all(label == IGNORE_INDEX for label in labels[1:]):
            no_target += 1
        else:
            examples.append(Example(tuple(ids), tuple(labels), (index,)))
    if not examples and records:
        raise TrainDataError(
            f"no record fits: {too_long} of {len(records)} are longer than max_length="
            f"{max_length} tokens (the longest has {longest}), {no_target} have nothing to "
            "learn; raise the recipe's max_length or shorten the records"
        )
    return FormattedData(examples, too_long, no_target, longest)
