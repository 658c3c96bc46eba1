"""Incremental detokenisation and stop strings (torch-free).

Byte-level tokenizers split multi-byte characters across tokens, and SentencePiece ones
change a token's text by what precedes it. So each new token is decoded together with a
few tokens before it, and only text past that context is emitted; while the decoded tail
is an incomplete character (U+FFFD), nothing is emitted until more tokens arrive::

    tokens: ... [prefix_offset ...... read_offset) [new ...]
    delta  = decode(prefix_offset:) minus decode(prefix_offset:read_offset)
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["IncrementalDetokenizer", "TokenDecoder"]

_CONTEXT_TOKENS = 5  # prompt tokens decoded with the first output tokens
_REPLACEMENT = "\ufffd"


class TokenDecoder(Protocol):
    """What the detokenizer needs from a tokenizer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str:
        """Text of a list of token ids."""


class IncrementalDetokenizer:
    """Output text of one request, grown one token at a time, with stop strings.

    Args:
        tokenizer: Anything with ``decode(ids, skip_special_tokens=...)``.
        prompt_token_ids: The prompt (its tail gives the first tokens their context).
        skip_special_tokens: Leave special tokens out of the text.
        stop: Stop strings; the text ends just before the first match.
    """

    def __init__(
        self,
        tokenizer: TokenDecoder,
        prompt_token_ids: list[int],
        *,
        skip_special_tokens: bool = True,
        stop: tuple[str, ...] = (),
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._tokens = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        self.text = ""
        self.stopped = False
        self._emitted = 0

    def add_token(self, token_id: int) -> bool:
        """Append one generated token; True when a stop string now ends the text."""
        self._tokens.append(token_id)
        delta = self._decode_new(final=False)
        return self._extend(delta)

    def finish(self) -> None:
        """At the end of generation: keep any trailing bytes that never completed a char."""
        if not self.stopped:
            self._extend(self._decode_new(final=True))

    def take_delta(self, *, final: bool) -> str:
        """Text not yet handed out; while not final, hold back a possible stop-string start."""
        end = len(self.text) if final or self.stopped else max(len(self.text) - self._holdback, 0)
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _decode_new(self, *, final: bool) -> str:
        skip = self.skip_special_tokens
        prefix = self.tokenizer.decode(
            self._tokens[self._prefix_offset : self._read_offset], skip_special_tokens=skip
        )
        full = self.tokenizer.decode(self._tokens[self._prefix_offset :], skip_special_tokens=skip)
        if len(full) <= len(prefix) or (full.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return full[len(prefix) :]

    def _extend(self, delta: str) -> bool:
        if not delta or self.stopped:
            return self.stopped
        search_from = max(len(self.text) - self._holdback, 0)
        self.text += delta
        for stop in self.stop:
            found = self.text.find(stop, search_from)
            if found != -1:
                self.text = self.text[:found]
                self.stopped = True
        return self.stopped
