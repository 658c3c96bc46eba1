"""The training log: which records each optimizer step learnt from, and its Merkle root.

Format (``openledger.training_log/1``)::

    step commitment  c_s  = keccak256(h_1 || h_2 || ... || h_k)
                            h_i: the 32-byte record hashes of step s, in the order fed
                            (micro-batch by micro-batch, row by row, packed records in
                            row order); a record fed twice in one step appears twice
    leaf             (uint256 step, bytes32 c_s)          step = 1, 2, ... (global step)
    training-log root = OpenZeppelin StandardMerkleTree root over the leaves
                        leaf hash = keccak256(keccak256(abi.encode(step, c_s)))

so ``MerkleProof.verify(proof, root, leafHash)`` holds on chain for each step, and anyone
holding the step's record hashes can show that a record trained the adapter at that step.
The log file ``training_log.json`` lists every step's record hashes in full.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openledger.crypto import StandardMerkleTree, keccak256, leaf_hash, to_hex, verify_proof
from openledger.exceptions import ManifestError
from openledger.types import Hash32

__all__ = [
    "TRAINING_LOG_FILE",
    "TRAINING_LOG_FORMAT",
    "TRAINING_LOG_LEAF_ENCODING",
    "StepRecord",
    "TrainingLog",
    "step_commitment",
    "verify_step",
]

TRAINING_LOG_FORMAT = "openledger.training_log/1"
TRAINING_LOG_LEAF_ENCODING = ("uint256", "bytes32")
"""ABI types of a training-log leaf: ``(step, commitment)``."""
TRAINING_LOG_FILE = "training_log.json"
"""The training log in an adapter folder: the record hashes of every optimizer step."""


def step_commitment(record_hashes: Sequence[str]) -> Hash32:
    """Return ``keccak256`` of the step's 32-byte record hashes concatenated in feed order."""
    return Hash32(to_hex(keccak256(b"".join(bytes.fromhex(h[2:]) for h in record_hashes))))


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The records one optimizer step learnt from.

    Attributes:
        step: The global optimizer step (1-based).
        record_hashes: Record hashes in the order they were fed.
    """

    step: int
    record_hashes: tuple[Hash32, ...]

    @property
    def commitment(self) -> Hash32:
        """The step commitment (see the module docstring)."""
        return step_commitment(self.record_hashes)

    @property
    def leaf(self) -> tuple[int, str]:
        """The Merkle leaf value ``(step, commitment)``."""
        return (self.step, self.commitment)


class TrainingLog:
    """An append-only log of optimizer steps and the records each one used.

    The trainer calls :meth:`feed` for each micro-batch and :meth:`commit` after each
    optimizer step.
    """

    def __init__(self, table: Sequence[Hash32], steps: Iterable[StepRecord] = ()) -> None:
        """Create a log.

        Args:
            table: Record hashes by source index (what :meth:`feed` indices refer to).
            steps: Steps already taken (when resuming).
        """
        self.table = list(table)
        self.steps: list[StepRecord] = list(steps)
        self._pending: list[Hash32] = []

    def feed(self, indices: Iterable[int]) -> None:
        """Note the source records of one micro-batch (negative indices are padding)."""
        self._pending.extend(self.table[i] for i in indices if i >= 0)

    def commit(self, step: int) -> None:
        """Close the optimizer step ``step`` with the records fed since the last commit."""
        if self._pending:
            self.steps.append(StepRecord(step, tuple(self._pending)))
        self._pending = []

    def truncate(self, step: int) -> None:
        """Forget steps after ``step`` (resuming from a checkpoint taken at ``step``)."""
        self.steps = [s for s in self.steps if s.step <= step]
        self._pending = []

    def tree(self) -> StandardMerkleTree:
        """Return the Merkle tree over the step leaves.

        Raises:
            ManifestError: If no step was logged.
        """
        if not self.steps:
            raise ManifestError("the training log is empty: no optimizer step was taken")
        return StandardMerkleTree.of([s.leaf for s in self.steps], TRAINING_LOG_LEAF_ENCODING)

    @property
    def root(self) -> Hash32:
        """The training-log root."""
        return self.tree().root

    def proof(self, step: int) -> list[Hash32]:
        """Return the Merkle proof of one step's leaf.

        Raises:
            ManifestError: If the step is not in the log.
        """
        for position, record in enumerate(self.steps):
            if record.step == step:
                return self.tree().proof(position)
        raise ManifestError(f"step {step} is not in the training log")

    def record_counts(self) -> dict[Hash32, int]:
        """Return how many times each record was fed, over all steps."""
        counts: dict[Hash32, int] = {}
        for record in self.steps:
            for digest in record.record_hashes:
                counts[digest] = counts.get(digest, 0) + 1
        return counts

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the log as the JSON value written to :data:`TRAINING_LOG_FILE`."""
        return {
            "format": TRAINING_LOG_FORMAT,
            "leaf_encoding": list(TRAINING_LOG_LEAF_ENCODING),
            "root": self.root if self.steps else None,
            "steps": [{"step": s.step, "records": list(s.record_hashes)} for s in self.steps],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the log as JSON (steps only; the table is not saved)."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], table: Sequence[Hash32] = ()) -> TrainingLog:
        """Read a log written by :meth:`save`, recomputing (not trusting) its root.

        Raises:
            ManifestError: If the file is missing, malformed, or its stored root does not
                match the steps it lists.
        """
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
            steps = [StepRecord(int(s["step"]), tuple(s["records"])) for s in body["steps"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"cannot read the training log {path}: {exc}") from None
        if body.get("format") != TRAINING_LOG_FORMAT:
            raise ManifestError(f"{path} is not a {TRAINING_LOG_FORMAT} file")
        log = cls(table, steps)
        if body.get("root") not in (None, log.root if steps else None):
            raise ManifestError(f"{path}: the stored root does not match the logged steps")
        return log


def verify_step(root: str, step: int, record_hashes: Sequence[str], proof: Sequence[str]) -> bool:
    """Check that step ``step`` used exactly ``record_hashes`` (in order) under ``root``.

    Returns:
        ``True`` if the proof holds, ``False`` otherwise (malformed input included).
    """
    try:
        leaf = leaf_hash((step, step_commitment(record_hashes)), TRAINING_LOG_LEAF_ENCODING)
    except (ValueError, TypeError):
        return False
    return verify_proof(root, leaf, list(proof))
