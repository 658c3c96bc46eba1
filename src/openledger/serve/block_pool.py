"""Fixed-size KV-cache blocks: allocation, reference counts and prefix caching (torch-free).

The KV cache is ``num_blocks`` blocks of ``block_size`` token slots each. A sequence holds
an ordered block table; token ``i`` of it lives in slot ``i % block_size`` of block
``block_table[i // block_size]``.

Prefix caching: every *full* block gets a content hash chained over the blocks before it
(and the sequence's cache salt), so equal prefixes hash equal block by block::

    h0 = H(salt, "",  tokens[0:bs])
    h1 = H(salt, h0, tokens[bs:2bs]) ...

A block becomes findable (sealed) once a scheduled step computes its tokens, so a hit
never reads KV that no step writes. A new sequence whose leading full blocks hash to
cached ones shares them (reference count +1) and skips computing them. Freed blocks keep
their hash while on the free list and can be revived by a later hit until they are handed
out again, least recently freed first.

NOTE: invariants (checked by tests/serve/test_serve_scheduler_stateful.py)
    * a block is on the free list  <=>  its ref_count == 0
    * sum of ref_counts == total length of all live block tables
    * the hash map points only at blocks whose stored hash is that key
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

from openledger.exceptions import ConfigError
from openledger.serve.sequence import SequenceState

__all__ = ["Block", "BlockPool", "hash_block"]


@dataclass(slots=True)
class Block:
    """One KV-cache block.

    Attributes:
        block_id: Index into the KV-cache tensors.
        ref_count: Number of sequences whose block table holds it.
        block_hash: Content hash once the block is full, else None.
        token_ids: The tokens it holds once full (checked on every cache hit).
    """

    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


def hash_block(parent: bytes, token_ids: tuple[int, ...], salt: str = "") -> bytes:
    """Content hash of a full block, chained on its parent block's hash."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(salt.encode())
    digest.update(b"\x00")
    digest.update(parent)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockPool:
    """Hands out KV-cache blocks to sequences; shares cached prefix blocks.

    Args:
        num_blocks: Blocks in the cache (>= 1).
        block_size: Token slots per block (>= 1).
        enable_prefix_caching: Share full blocks between sequences with equal prefixes.
    """

    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ConfigError(f"num_blocks and block_size must be >= 1: {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # NOTE: a dict as an ordered set: O(1) removal from the middle when a hit revives
        # a freed block, O(1) pop of the least recently freed one.
        self._free: dict[int, None] = dict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks not held by any sequence (some may still serve as cached prefixes)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Full blocks currently findable by content hash."""
        return len(self._cached)

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: SequenceState) -> bool:
        """Whether :meth:`allocate` would succeed (conservative: ignores cache hits)."""
        return self.blocks_needed(len(seq)) <= len(self._free)

    def allocate(self, seq: SequenceState) -> int:
        """Give a sequence blocks for all its tokens, reusing cached prefix blocks.

        At most ``len(seq) - 1`` tokens come from the cache: the last token is always
        computed, since its logits are needed. The fresh blocks become findable only once
        the scheduler seals them (:meth:`seal`), once a step computes their tokens.

        Returns:
            The number of leading tokens found in the cache (also ``seq.num_cached_tokens``).

        Raises:
            RuntimeError: The sequence already holds blocks, or too few are free (callers
                check :meth:`can_allocate` first).
        """
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.seq_id} already holds blocks")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free blocks for sequence {seq.seq_id}")
        num_hits = self._take_cached_prefix(seq) if self.enable_prefix_caching else 0
        seq.num_sealed_blocks = num_hits
        seq.num_cached_tokens = num_hits * self.block_size
        for _ in range(len(seq.block_table), self.blocks_needed(len(seq))):
            seq.block_table.append(self._fresh().block_id)
        return seq.num_cached_tokens

    def _take_cached_prefix(self, seq: SequenceState) -> int:
        """Append the cached blocks of the sequence's longest cached prefix; their count."""
        parent = b""
        # NOTE: the block holding the last token is never taken from the cache.
        for start in range(0, len(seq) - self.block_size, self.block_size):
            tokens = tuple(seq.token_ids[start : start + self.block_size])
            parent = hash_block(parent, tokens, seq.kv_salt)
            hit = self._lookup(parent, tokens)
            if hit is None:
                break
            self._take(hit)
            seq.block_table.append(hit.block_id)
        return len(seq.block_table)

    def seal(self, seq: SequenceState, num_tokens: int) -> None:
        """Make the full blocks among the first ``num_tokens`` tokens findable by content.

        Called once a step is scheduled to compute those tokens: a later sequence (even
        one in the same step, whose attention runs after this step's KV writes) may then
        share them. No-op without prefix caching.
        """
        if not self.enable_prefix_caching:
            return
        num_full = min(num_tokens // self.block_size, len(seq.block_table))
        for index in range(seq.num_sealed_blocks, num_full):
            block = self.blocks[seq.block_table[index]]
            start = index * self.block_size
            tokens = tuple(seq.token_ids[start : start + self.block_size])
            parent = b""
            if index > 0:
                parent = self.blocks[seq.block_table[index - 1]].block_hash or b""
            block.block_hash = hash_block(parent, tokens, seq.kv_salt)
            block.token_ids = tokens
            self._cached.setdefault(block.block_hash, block.block_id)
        seq.num_sealed_blocks = max(seq.num_sealed_blocks, num_full)

    def free(self, seq: SequenceState) -> None:
        """Release a sequence's blocks (tail first, so tails are evicted first)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed twice")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table.clear()
        seq.num_cached_tokens = seq.num_computed_tokens = seq.num_sealed_blocks = 0

    def can_append(self, seq: SequenceState) -> bool:
        """Whether the sequence's next decode step has a slot (a new block if needed)."""
        needs_block = self.blocks_needed(len(seq)) > len(seq.block_table)
        return not needs_block or bool(self._free)

    def append_slot(self, seq: SequenceState) -> None:
        """Make room for the KV of the sequence's last token before a decode step.

        Adds a block when the token starts a new one (the block is sealed by :meth:`seal`
        once full).
        """
        if self.blocks_needed(len(seq)) > len(seq.block_table):
            seq.block_table.append(self._fresh().block_id)

    def _lookup(self, block_hash: bytes, tokens: tuple[int, ...]) -> Block | None:
        block_id = self._cached.get(block_hash)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        return block if block.token_ids == tokens else None

    def _take(self, block: Block) -> None:
        if block.ref_count == 0:
            del self._free[block.block_id]
        block.ref_count += 1

    def _fresh(self) -> Block:
        block_id = next(iter(self._free))
        del self._free[block_id]
        block = self.blocks[block_id]
        if block.block_hash is not None and self._cached.get(block.block_hash) == block_id:
            del self._cached[block.block_hash]
        block.ref_count = 1
        block.block_hash = None
        block.token_ids = ()
        return block
