"""Canonical encoding and record hashes: pinned vector, properties and refusals."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.crypto import keccak256
from openledger.data import (
    ClassificationRecord,
    InstructionRecord,
    Record,
    TextRecord,
    canonical_bytes,
    record_hash,
)
from openledger.data.schemas import validate_record
from openledger.exceptions import SchemaError

text = st.text(min_size=1, max_size=40)


def test_pinned_encoding_and_hash() -> None:
    record = InstructionRecord(instruction="Café?", response="Oui")
    expected = (
        '{"data":{"instruction":"Café?","response":"Oui"},"schema":"openledger.instruction/1"}'
    )
    assert canonical_bytes(record) == expected.encode("utf-8")
    assert record_hash(record) == "0x" + keccak256(expected.encode("utf-8")).hex()


@settings(max_examples=100, deadline=None)
@given(text, text, st.one_of(st.none(), text))
def test_hash_does_not_depend_on_key_order(
    instruction: str, response: str, extra: str | None
) -> None:
    forward = {"instruction": instruction, "input": extra, "response": response}
    backward = dict(reversed(list(forward.items())))
    assert record_hash(InstructionRecord.model_validate(forward)) == record_hash(
        InstructionRecord.model_validate(backward)
    )


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_equivalent_unicode_forms_hash_alike(value: str) -> None:
    forms = {unicodedata.normalize(f, value) for f in ("NFC", "NFD")}
    hashes = {record_hash(TextRecord(text=f)) for f in forms}
    assert len(hashes) == 1


@settings(max_examples=100, deadline=None)
@given(text, text)
def test_distinct_content_hashes_differently(a: str, b: str) -> None:
    same = unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)
    assert (record_hash(TextRecord(text=a)) == record_hash(TextRecord(text=b))) == same


def test_schema_id_is_part_of_the_hash() -> None:
    class Note(Record):
        text: str

    assert Note.schema_id.endswith("Note/1")
    assert record_hash(Note(text="x")) != record_hash(TextRecord(text="x"))


def test_none_fields_are_left_out_but_empty_strings_are_kept() -> None:
    base = InstructionRecord(instruction="a", response="b")
    assert b"input" not in canonical_bytes(base)
    with_empty = InstructionRecord(instruction="a", input="", response="b")
    assert record_hash(with_empty) != record_hash(base)


def test_field_values_are_distinct_from_swapped_fields() -> None:
    a = ClassificationRecord(text="x", label="y")
    b = ClassificationRecord(text="y", label="x")
    assert record_hash(a) != record_hash(b)


def test_lone_surrogate_is_refused_by_validation_and_by_the_encoder() -> None:
    with pytest.raises(SchemaError, match="text: Input should be a valid string"):
        validate_record(TextRecord, {"text": "bad \udc80 byte"})
    with pytest.raises(SchemaError, match="not valid UTF-8"):
        canonical_bytes(TextRecord.model_construct(text="bad \udc80 byte"))


def test_non_finite_numbers_are_refused() -> None:
    class Scored(Record):
        score: float

    with pytest.raises(SchemaError, match=r"field record\.score is not finite"):
        canonical_bytes(Scored(score=float("nan")))


def test_documented_example_root() -> None:
    """docs/data.md quotes this root; keep the page and the code in step."""
    from openledger.crypto import StandardMerkleTree

    leaves = [
        (record_hash(InstructionRecord(instruction="Café?", response="Oui")), "0x" + "11" * 20),
        (record_hash(TextRecord(text="Hello")), "0x" + "22" * 20),
    ]
    root = StandardMerkleTree.of(leaves, ["bytes32", "address"]).root
    assert root == "0x6020e7314bc83af253d02b03dcc98ca7c1e570ec24040bf3df08e0f81a36c6d9"
    assert leaves[1][0] == "0xf9666fd4bfef24370623e1d3d797d9dca1cb6680f8756d5c70c55d5b1c0726e5"
