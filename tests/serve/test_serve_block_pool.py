"""BlockPool: exact block ids, reference counts and prefix-cache hits on tiny pools."""

from __future__ import annotations

import pytest

from openledger.exceptions import ConfigError
from openledger.serve import SamplingParams
from openledger.serve.block_pool import BlockPool
from openledger.serve.sequence import SequenceState


def _seq(seq_id: int, tokens: list[int], salt: str = "") -> SequenceState:
    return SequenceState(
        seq_id, list(tokens), len(tokens), SamplingParams(), 10_000, cache_salt=salt
    )


def _computed(pool: BlockPool, seq: SequenceState) -> int:
    """Allocate and seal every token, as a step computing the whole prompt does."""
    hits = pool.allocate(seq)
    pool.seal(seq, len(seq))
    return hits


def test_allocates_ceil_blocks_in_order_and_frees_tail_first() -> None:
    pool = BlockPool(6, 4)
    seq = _seq(0, list(range(9)))
    assert pool.can_allocate(seq)
    assert pool.allocate(seq) == 0
    assert seq.block_table == [0, 1, 2]
    assert pool.num_free_blocks == 3
    pool.free(seq)
    assert seq.block_table == []
    assert pool.num_free_blocks == 6
    # freed tail first: the next fresh blocks are the never-used ones, then 2, 1, 0
    other = _seq(1, list(range(100, 120)))
    pool.allocate(other)
    assert other.block_table == [3, 4, 5, 2, 1]


def test_shared_prefix_reuses_full_blocks_but_recomputes_the_last_token() -> None:
    pool = BlockPool(10, 4)
    first = _seq(0, list(range(10)))
    _computed(pool, first)
    second = _seq(1, [*range(8), 50, 51, 52])
    assert _computed(pool, second) == 8
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] not in first.block_table
    assert [pool.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]
    # exactly 8 tokens: the second block holds the last token and is computed again
    third = _seq(2, list(range(8)))
    assert pool.allocate(third) == 4
    assert third.block_table[0] == first.block_table[0]
    assert third.block_table[1] != first.block_table[1]


def test_salt_separates_caches() -> None:
    pool = BlockPool(10, 4)
    _computed(pool, _seq(0, list(range(9)), salt="adapter-a"))
    assert _computed(pool, _seq(1, list(range(9)), salt="adapter-b")) == 0
    assert _computed(pool, _seq(2, list(range(9)), salt="adapter-a")) == 8


def test_freed_blocks_stay_cached_until_handed_out_again() -> None:
    pool = BlockPool(4, 2)
    first = _seq(0, [1, 2, 3, 4, 5])
    _computed(pool, first)
    pool.free(first)
    assert pool.num_cached_blocks == 2
    again = _seq(1, [1, 2, 3, 4, 9])
    assert pool.allocate(again) == 4
    pool.free(again)
    # a sequence needing every block evicts the cached ones
    greedy = _seq(2, [7] * 8)
    pool.allocate(greedy)
    assert pool.num_free_blocks == 0
    pool.free(greedy)
    assert pool.allocate(_seq(3, [1, 2, 3, 4, 9])) == 0


def test_append_slot_adds_a_block_at_the_boundary_and_seals_full_ones() -> None:
    pool = BlockPool(4, 2, enable_prefix_caching=True)
    seq = _seq(0, [1, 2, 3])
    _computed(pool, seq)
    assert len(seq.block_table) == 2
    seq.token_ids.append(4)  # position 3 fills block 1
    assert pool.can_append(seq)
    pool.append_slot(seq)
    assert len(seq.block_table) == 2
    assert pool.blocks[seq.block_table[1]].block_hash is None  # not computed yet
    pool.seal(seq, len(seq))
    assert pool.blocks[seq.block_table[1]].token_ids == (3, 4)
    seq.token_ids.append(5)  # position 4 starts block 2
    pool.append_slot(seq)
    assert len(seq.block_table) == 3
    follower = _seq(1, [1, 2, 3, 4, 9])
    assert pool.can_allocate(follower) is False  # 3 needed, 1 free
    pool.free(seq)
    assert pool.allocate(follower) == 4


def test_blocks_are_found_only_once_sealed_and_only_up_to_the_sealed_tokens() -> None:
    pool = BlockPool(20, 4)
    first = _seq(0, list(range(13)))
    pool.allocate(first)
    assert pool.num_cached_blocks == 0  # nothing computed yet: nothing to share
    assert pool.allocate(_seq(1, list(range(13)))) == 0
    pool.seal(first, 6)  # a first chunk of 6 tokens fills block 0 only
    assert (first.num_sealed_blocks, pool.num_cached_blocks) == (1, 1)
    assert pool.allocate(_seq(2, list(range(13)))) == 4
    pool.seal(first, 13)
    assert first.num_sealed_blocks == 3
    assert pool.allocate(_seq(3, list(range(13)))) == 12


def test_seal_is_a_no_op_without_prefix_caching() -> None:
    pool = BlockPool(6, 2, enable_prefix_caching=False)
    seq = _seq(0, [1, 2, 3, 4, 5])
    pool.allocate(seq)
    pool.seal(seq, 5)
    assert (seq.num_sealed_blocks, pool.num_cached_blocks) == (0, 0)
    assert pool.allocate(_seq(1, [1, 2, 3, 4, 5])) == 0


def test_double_free_is_caught() -> None:
    pool = BlockPool(2, 2)
    seq = _seq(0, [1, 2, 3])
    pool.allocate(seq)
    table = list(seq.block_table)
    pool.free(seq)
    seq.block_table = table
    with pytest.raises(RuntimeError, match="freed twice"):
        pool.free(seq)


def test_rejects_empty_pools() -> None:
    with pytest.raises(ConfigError):
        BlockPool(0, 16)
