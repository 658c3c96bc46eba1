"""The training log: commitments, the OpenZeppelin-style root, proofs, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_abi.abi import encode as abi_encode
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.crypto import keccak256
from openledger.exceptions import ManifestError
from openledger.train import StepRecord, TrainingLog, step_commitment, verify_step
from openledger.types import Hash32

HASHES = [Hash32("0x" + bytes([i]).hex() * 32) for i in range(1, 9)]


def reference_root(steps: list[tuple[int, list[str]]]) -> bytes:
    """A slow, obvious rebuild: eth_abi leaves, sorted, folded pairwise like OpenZeppelin."""
    leaves = []
    for step, hashes in steps:
        commitment = keccak256(b"".join(bytes.fromhex(h[2:]) for h in hashes))
        leaves.append(keccak256(keccak256(abi_encode(["uint256", "bytes32"], [step, commitment]))))
    nodes = sorted(leaves)
    tree = [b""] * (len(nodes) - 1) + nodes[::-1]
    for k in range(len(nodes) - 2, -1, -1):
        a, b = tree[2 * k + 1], tree[2 * k + 2]
        tree[k] = keccak256(min(a, b) + max(a, b))
    return tree[0]


def test_commitment_is_keccak_of_the_concatenated_hashes_in_order() -> None:
    joined = bytes.fromhex(HASHES[0][2:] + HASHES[1][2:])
    assert step_commitment(HASHES[:2]) == "0x" + keccak256(joined).hex()
    assert step_commitment(HASHES[:2]) != step_commitment(HASHES[1::-1])


def test_feed_and_commit_group_micro_batches_into_steps() -> None:
    log = TrainingLog(HASHES)
    log.feed([0, 1])
    log.feed([2, -1])  # -1 is padding
    log.commit(1)
    log.feed([3])
    log.commit(2)
    log.commit(3)  # nothing fed: no step
    assert log.steps == [StepRecord(1, tuple(HASHES[:3])), StepRecord(2, (HASHES[3],))]
    assert log.record_counts() == {h: 1 for h in HASHES[:4]}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=5), min_size=1, max_size=12))
def test_root_matches_the_reference_and_every_step_proves(batches: list[list[int]]) -> None:
    log = TrainingLog(HASHES)
    for step, batch in enumerate(batches, start=1):
        log.feed(batch)
        log.commit(step)
    expected = [(s, [HASHES[i] for i in b]) for s, b in enumerate(batches, start=1)]
    assert log.root == "0x" + reference_root(expected).hex()
    for step, hashes in expected:
        assert verify_step(log.root, step, hashes, log.proof(step))
        assert not verify_step(log.root, step + 1, hashes, log.proof(step))
        assert not verify_step(log.root, step, [*hashes[::-1], HASHES[0]], log.proof(step))


def test_save_load_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    log = TrainingLog(HASHES, [StepRecord(1, tuple(HASHES[:2])), StepRecord(2, (HASHES[5],))])
    path = log.save(tmp_path / "training_log.json")
    again = TrainingLog.load(path)
    assert again.steps == log.steps
    assert again.root == log.root
    path.write_text(path.read_text().replace(HASHES[5][2:], HASHES[6][2:]))
    with pytest.raises(ManifestError, match="root does not match"):
        TrainingLog.load(path)


def test_truncate_and_empty_log() -> None:
    log = TrainingLog(HASHES, [StepRecord(s, (HASHES[s],)) for s in (1, 2, 3)])
    log.truncate(2)
    assert [s.step for s in log.steps] == [1, 2]
    with pytest.raises(ManifestError, match="empty"):
        _ = TrainingLog(HASHES).root
    with pytest.raises(ManifestError, match="step 9"):
        log.proof(9)
