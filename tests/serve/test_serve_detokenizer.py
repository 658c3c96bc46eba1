"""Incremental detokenisation: multi-byte characters, SentencePiece-free byte BPE, stops."""

from __future__ import annotations

from typing import Any

import pytest

from openledger.models import tiny_tokenizer
from openledger.serve.detokenizer import IncrementalDetokenizer

TEXT = "naïve café, 東京 🙂 Москва — done"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


def _stream(
    tokenizer: Any, ids: list[int], prompt: list[int], **kwargs: Any
) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, prompt, **kwargs)
    pieces = []
    for token in ids:
        stopped = detok.add_token(token)
        pieces.append(detok.take_delta(final=stopped))
        if stopped:
            break
    else:
        detok.finish()
        pieces.append(detok.take_delta(final=True))
    return [p for p in pieces if p], detok


def test_multibyte_characters_are_never_split(tokenizer: Any) -> None:
    ids = tokenizer(TEXT).input_ids
    # the tiny vocabulary splits the emoji (4 bytes) and CJK characters across tokens
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    pieces, detok = _stream(tokenizer, ids, tokenizer("Prompt:").input_ids)
    assert "".join(pieces) == TEXT == detok.text
    assert all("\ufffd" not in piece for piece in pieces)


def test_trailing_incomplete_bytes_are_flushed_at_the_end(tokenizer: Any) -> None:
    ids = tokenizer("ok 🙂").input_ids
    cut = ids[:-1]
    pieces, _ = _stream(tokenizer, cut, [])
    assert "".join(pieces) == tokenizer.decode(cut)


def test_stop_string_ends_text_before_the_match_and_never_leaks(tokenizer: Any) -> None:
    ids = tokenizer(TEXT).input_ids
    pieces, detok = _stream(tokenizer, ids, [], stop=("東京",))
    assert detok.stopped
    assert "".join(pieces) == "naïve café, "
    assert detok.text == "naïve café, "


def test_earliest_of_several_stop_strings_wins(tokenizer: Any) -> None:
    ids = tokenizer(TEXT).input_ids
    _, detok = _stream(tokenizer, ids, [], stop=("Москва", "café"))
    assert detok.text == "naïve "


def test_special_tokens_are_skipped_or_kept(tokenizer: Any) -> None:
    ids = [*tokenizer("hi").input_ids, tokenizer.eos_token_id]
    skipped, _ = _stream(tokenizer, ids, [])
    kept, _ = _stream(tokenizer, ids, [], skip_special_tokens=False)
    assert "".join(skipped) == "hi"
    assert "".join(kept) == "hi<|im_end|>"
