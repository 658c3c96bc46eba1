"""Formatting: exact loss masks on the tiny ChatML tokenizer, the EOS check, dropping."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from openledger.data import (
    ChatRecord,
    ClassificationRecord,
    InstructionRecord,
    Record,
    TextRecord,
)
from openledger.exceptions import ChatTemplateError, TrainDataError
from openledger.models import tiny_tokenizer
from openledger.train import IGNORE_INDEX, check_eos, format_record, record_messages
from openledger.train.formatting import check_formattable, format_records

NO_EOS_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
UNSTABLE_TEMPLATE = "{{ messages | length }}" + NO_EOS_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


def learnt_text(tokenizer: Any, record: Record) -> list[str]:
    """Decode each maximal run of learnt tokens."""
    ids, labels = format_record(record, tokenizer)
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def test_instruction_mask_is_exactly_the_response_and_eos(tokenizer: Any) -> None:
    record = InstructionRecord(instruction="Code red?", response="RED ok.")
    ids, labels = format_record(record, tokenizer)
    text = tokenizer.decode(ids)
    assert (
        text == "<|im_start|>user\nCode red?<|im_end|>\n<|im_start|>assistant\nRED ok.<|im_end|>\n"
    )
    mask = "".join("1" if label != IGNORE_INDEX else "0" for label in labels)
    prompt_tokens = len(
        tokenizer("<|im_start|>user\nCode red?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    )
    answer_tokens = len(tokenizer("RED ok.<|im_end|>")["input_ids"])
    assert mask == "0" * prompt_tokens + "1" * answer_tokens + "0"
    assert learnt_text(tokenizer, record) == ["RED ok.<|im_end|>"]


def test_instruction_input_joins_the_prompt(tokenizer: Any) -> None:
    record = InstructionRecord(instruction="Sum", input="2 3", response="5")
    assert record_messages(record) == [
        {"role": "user", "content": "Sum\n\n2 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert learnt_text(tokenizer, record) == ["5<|im_end|>"]


def test_chat_learns_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    record = ChatRecord.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ]
        }
    )
    assert learnt_text(tokenizer, record) == ["Hello.<|im_end|>", "Paris.<|im_end|>"]


def test_classification_learns_the_label(tokenizer: Any) -> None:
    record = ClassificationRecord(text="I love it", label="positive")
    assert learnt_text(tokenizer, record) == ["positive<|im_end|>"]


def test_text_is_learnt_whole_with_eos(tokenizer: Any) -> None:
    ids, labels = format_record(TextRecord(text="The capital of France is Paris."), tokenizer)
    assert labels == ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == "The capital of France is Paris.<|im_end|>"


def test_the_eos_check_passes_chatml(tokenizer: Any) -> None:
    check_eos(tokenizer)


def test_the_eos_check_catches_a_template_that_never_ends_turns(tokenizer: Any) -> None:
    with pytest.raises(ChatTemplateError, match="never stop"):
        check_eos(tokenizer, NO_EOS_TEMPLATE)
    record = InstructionRecord(instruction="a", response="b")
    with pytest.raises(ChatTemplateError, match="EOS"):
        format_record(record, tokenizer, chat_template=NO_EOS_TEMPLATE)


def test_a_template_that_is_not_prefix_stable_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ChatTemplateError, match="prefixes"):
        check_eos(tokenizer, UNSTABLE_TEMPLATE)


def test_a_tokenizer_without_template_or_eos_is_refused() -> None:
    bare = tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        check_eos(bare)
    no_eos = tiny_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(ChatTemplateError, match="no EOS"):
        check_eos(no_eos)


class Note(Record):
    schema_id: ClassVar[str] = "test.note/1"
    body: str


class QA(Record):
    schema_id: ClassVar[str] = "test.qa/1"
    q: str
    a: str

    def to_messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.q}, {"role": "assistant", "content": self.a}]


def test_an_unformattable_schema_is_named(tokenizer: Any) -> None:
    with pytest.raises(TrainDataError, match=r"test\.note/1"):
        check_formattable(Note)
    with pytest.raises(TrainDataError, match="to_messages"):
        format_record(Note(body="x"), tokenizer)


def test_a_custom_schema_with_to_messages_is_formatted(tokenizer: Any) -> None:
    check_formattable(QA)
    assert learnt_text(tokenizer, QA(q="2+2?", a="4")) == ["4<|im_end|>"]


def test_too_long_records_are_dropped_and_counted(tokenizer: Any) -> None:
    short = InstructionRecord(instruction="Hi", response="Yo")
    long = InstructionRecord(instruction="word " * 40, response="Yo")
    result = format_records([short, long, short], tokenizer, max_length=32)
    assert [e.records for e in result.examples] == [(0,), (2,)]
    assert (result.num_too_long, result.num_no_target) == (1, 0)
    assert result.longest > 32


def test_all_too_long_is_an_error_naming_max_length(tokenizer: Any) -> None:
    long = InstructionRecord(instruction="word " * 40, response="Yo")
    with pytest.raises(TrainDataError, match="max_length=16"):
        format_records([long, long], tokenizer, max_length=16)
