"""Merkle trees compatible with OpenZeppelin's ``StandardMerkleTree``.

Roots and proofs match the npm library ``@openzeppelin/merkle-tree`` byte for byte, so a
root computed here can be checked on chain with OpenZeppelin's ``MerkleProof.verify``.

Layout (the same as the reference library)::

    leaf(v)    = keccak256(keccak256(abi.encode(v)))     # double hash: no 64-byte preimage
    node(a, b) = keccak256(min(a, b) ++ max(a, b))        # sorted pair, proofs need no sides
    leaves are sorted ascending by hash; with n leaves the tree is an array of 2n - 1 nodes,
    leaf i (in sorted order) at index 2n - 2 - i, node k has children 2k + 1 and 2k + 2,
    and the root at index 0.

NOTE: encoding static elementary ABI types (address, bytesN, uintN, intN, bool) by hand is
a plain concatenation of 32-byte words; doing that instead of calling ``eth_abi`` is what
makes 100k-leaf trees take well under a second.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode

from openledger.crypto.hashing import from_hex, keccak256, to_hex
from openledger.exceptions import CryptoError
from openledger.types import Hash32

__all__ = [
    "MultiProof",
    "StandardMerkleTree",
    "hash_pair",
    "leaf_hash",
    "process_multiproof",
    "process_proof",
    "root_of_leaves",
    "verify_multiproof",
    "verify_proof",
]

_UINT = re.compile(r"uint(\d*)")
_INT = re.compile(r"int(\d*)")
_BYTES_N = re.compile(r"bytes(\d+)")
_Encoder = Callable[[Any], bytes]


def hash_pair(a: bytes, b: bytes) -> bytes:
    """Return ``keccak256`` of the two 32-byte nodes concatenated in ascending order."""
    return keccak256(a + b if a <= b else b + a)


def _word_address(value: Any) -> bytes:
    return bytes(12) + from_hex(value, size=20, what="address value")


def _word_bytes_n(size: int) -> _Encoder:
    def encode(value: Any) -> bytes:
        return from_hex(value, size=size, what=f"bytes{size} value") + bytes(32 - size)

    return encode


def _word_int(bits: int, signed: bool) -> _Encoder:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def encode(value: Any) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            kind = f"{'' if signed else 'u'}int{bits}"
            raise CryptoError(f"{kind} value must be an int in [{low}, {high}], got {value!r}")
        return value.to_bytes(32, "big", signed=signed)

    return encode


def _word_bool(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise CryptoError(f"bool value must be True or False, got {value!r}")
    return bytes(31) + (b"\x01" if value else b"\x00")


def _static_encoder(abi_type: str) -> _Encoder | None:
    """Return a hand encoder for a static elementary type, or ``None`` to use eth_abi."""
    if abi_type == "address":
        return _word_address
    if abi_type == "bool":
        return _word_bool
    for pattern, signed in ((_UINT, False), (_INT, True)):
        match = pattern.fullmatch(abi_type)
        if match:
            return _word_int(int(match.group(1) or 256), signed)
    match = _BYTES_N.fullmatch(abi_type)
    if match and 1 <= int(match.group(1)) <= 32:
        return _word_bytes_n(int(match.group(1)))
    return None


def _make_encoder(leaf_encoding: Sequence[str]) -> Callable[[Sequence[Any]], bytes]:
    words = [_static_encoder(t) for t in leaf_encoding]
    types = list(leaf_encoding)
    if any(w is None for w in words):

        def encode_abi(values: Sequence[Any]) -> bytes:
            try:
                return abi_encode(types, list(values))
            except Exception as exc:  # eth_abi raises several unrelated types
                raise CryptoError(f"cannot abi-encode {values!r} as {types}: {exc}") from exc

        return encode_abi
    static = [w for w in words if w is not None]

    def encode_static(values: Sequence[Any]) -> bytes:
        return b"".join([word(v) for word, v in zip(static, values, strict=True)])

    return encode_static


def leaf_hash(value: Sequence[Any], leaf_encoding: Sequence[str]) -> bytes:
    """Return the standard leaf hash ``keccak256(keccak256(abi.encode(value)))``.

    Args:
        value: One leaf, e.g. ``(record_hash, contributor)``.
        leaf_encoding: Its ABI types, e.g. ``("bytes32", "address")``.

    Returns:
        The 32-byte leaf hash.

    Raises:
        CryptoError: If the value does not match the types.
    """
    if len(value) != len(leaf_encoding):
        raise CryptoError(f"leaf has {len(value)} values but the encoding has {len(leaf_encoding)}")
    return keccak256(keccak256(_make_encoder(leaf_encoding)(value)))


def root_of_leaves(leaves: Sequence[bytes]) -> bytes:
    """Return the StandardMerkleTree root over already-hashed 32-byte leaves (any order).

    Cheaper than building a :class:`StandardMerkleTree` when only the root is needed.

    Raises:
        CryptoError: If there are no leaves.
    """
    if not leaves:
        raise CryptoError("a Merkle tree needs at least one leaf, got none")
    ordered = sorted(leaves)
    size = 2 * len(ordered) - 1
    tree: list[bytes] = [b""] * (size - len(ordered)) + ordered[::-1]
    for k in range(size - 1 - len(ordered), -1, -1):
        a, b = tree[2 * k + 1], tree[2 * k + 2]
        tree[k] = keccak256(a + b if a <= b else b + a)
    return tree[0]


def process_proof(leaf: bytes | str, proof: Sequence[bytes | str]) -> bytes:
    """Fold ``proof`` into ``leaf`` with sorted-pair hashing and return the implied root.

    Raises:
        CryptoError: If the leaf or a proof element is not 32 bytes.
    """
    node = from_hex(leaf, size=32, what="leaf hash")
    for i, sibling in enumerate(proof):
        node = hash_pair(node, from_hex(sibling, size=32, what=f"proof[{i}]"))
    return node


def verify_proof(root: bytes | str, leaf: bytes | str, proof: Sequence[bytes | str]) -> bool:
    """Check a single-leaf proof the way OpenZeppelin's ``MerkleProof.verify`` does.

    Args:
        root: The tree root (32 bytes or ``0x``-hex).
        leaf: The leaf hash (already double-hashed), 32 bytes or ``0x``-hex.
        proof: Sibling hashes from the leaf up to the root.

    Returns:
        ``True`` if the proof leads from ``leaf`` to ``root``; ``False`` otherwise, including
        for malformed input.
    """
    try:
        return process_proof(leaf, proof) == from_hex(root, size=32, what="root")
    except CryptoError:
        return False


@dataclass(frozen=True)
class MultiProof:
    """A proof for several leaves at once, as OpenZeppelin's ``MerkleProof.multiProofVerify``
    takes it.

    Attributes:
        leaves: Leaf hashes (``0x``-hex) in the order the proof consumes them.
        proof: Sibling hashes that are not computed from the leaves.
        proof_flags: Per hashing step, ``True`` to take the next computed node, ``False``
            to take the next ``proof`` element.
        values: The leaf values, aligned with :attr:`leaves`.
    """

    leaves: tuple[Hash32, ...]
    proof: tuple[Hash32, ...]
    proof_flags: tuple[bool, ...]
    values: tuple[tuple[Any, ...], ...] = ()


def process_multiproof(
    leaves: Sequence[bytes | str], proof: Sequence[bytes | str], proof_flags: Sequence[bool]
) -> bytes:
    """Return the root implied by a multiproof.

    Raises:
        CryptoError: If the parts do not fit together or a node is not 32 bytes.
    """
    if len(leaves) + len(proof) != len(proof_flags) + 1 or len(proof) < proof_flags.count(False):
        raise CryptoError("the multiproof's leaves, proof and proof_flags do not fit together")
    stack = deque(from_hex(x, size=32, what="leaf hash") for x in leaves)
    siblings = deque(from_hex(x, size=32, what="proof node") for x in proof)
    for flag in proof_flags:
        a = stack.popleft()
        b = stack.popleft() if flag else siblings.popleft()
        stack.append(hash_pair(a, b))
    return (stack or siblings).pop()


def verify_multiproof(root: bytes | str, multiproof: MultiProof) -> bool:
    """Return whether ``multiproof`` proves all its leaves against ``root``."""
    try:
        implied = process_multiproof(multiproof.leaves, multiproof.proof, multiproof.proof_flags)
        return implied == from_hex(root, size=32, what="root")
    except (CryptoError, IndexError):
        return False


class StandardMerkleTree:
    """A Merkle tree over ABI-typed values, laid out like OpenZeppelin's StandardMerkleTree.

    Example:
        >>> tree = StandardMerkleTree.of([("0x" + "11" * 32, 5)], ["bytes32", "uint256"])
        >>> tree.verify(0, tree.proof(0))
        True
    """

    __slots__ = ("_index_of_leaf", "_tree", "_tree_index", "leaf_encoding", "values")

    def __init__(
        self, values: Sequence[Sequence[Any]], leaf_encoding: Sequence[str], leaves: list[bytes]
    ) -> None:
        if not leaves:
            raise CryptoError("a Merkle tree needs at least one leaf, got none")
        self.values: tuple[tuple[Any, ...], ...] = tuple(tuple(v) for v in values)
        self.leaf_encoding: tuple[str, ...] = tuple(leaf_encoding)
        order = sorted(range(len(leaves)), key=leaves.__getitem__)
        size = 2 * len(leaves) - 1
        tree: list[bytes] = [b""] * size
        self._tree_index = [0] * len(leaves)
        for position, value_index in enumerate(order):
            tree[size - 1 - position] = leaves[value_index]
            self._tree_index[value_index] = size - 1 - position
        for k in range(size - 1 - len(leaves), -1, -1):
            tree[k] = hash_pair(tree[2 * k + 1], tree[2 * k + 2])
        self._tree = tree
        self._index_of_leaf = {leaf: i for i, leaf in enumerate(leaves)}

    @classmethod
    def of(
        cls, values: Sequence[Sequence[Any]], leaf_encoding: Sequence[str]
    ) -> StandardMerkleTree:
        """Build a tree from values and their ABI types (leaves sorted, as OpenZeppelin does).

        Args:
            values: The leaves, each a sequence matching ``leaf_encoding``.
            leaf_encoding: ABI type names, e.g. ``["bytes32", "address"]``.

        Returns:
            The tree.

        Raises:
            CryptoError: If there are no values or a value does not match its types.
        """
        encode = _make_encoder(leaf_encoding)
        width = len(leaf_encoding)
        leaves = []
        for i, value in enumerate(values):
            if len(value) != width:
                raise CryptoError(f"values[{i}] has {len(value)} items, the encoding has {width}")
            leaves.append(keccak256(keccak256(encode(value))))
        return cls(values, leaf_encoding, leaves)

    @property
    def root(self) -> Hash32:
        """The root as ``0x``-hex."""
        return Hash32(to_hex(self._tree[0]))

    def __len__(self) -> int:
        return len(self.values)

    def leaf_hash(self, index: int) -> Hash32:
        """Return the leaf hash of ``values[index]`` as ``0x``-hex."""
        return Hash32(to_hex(self._tree[self._tree_index[self._value_index(index)]]))

    def index_of(self, value: Sequence[Any]) -> int:
        """Return the position in :attr:`values` of a value.

        Raises:
            CryptoError: If the value is not in the tree.
        """
        leaf = leaf_hash(value, self.leaf_encoding)
        if leaf not in self._index_of_leaf:
            raise CryptoError(f"value {tuple(value)!r} is not a leaf of this tree")
        return self._index_of_leaf[leaf]

    def proof(self, item: int | Sequence[Any]) -> list[Hash32]:
        """Return the proof for a leaf given by its position in :attr:`values` or its value.

        Args:
            item: Index into :attr:`values`, or the value itself.

        Returns:
            Sibling hashes from the leaf up to the root, as ``0x``-hex.
        """
        index = self._value_index(item) if isinstance(item, int) else self.index_of(item)
        node = self._tree_index[index]
        proof: list[Hash32] = []
        while node > 0:
            sibling = node + 1 if node % 2 else node - 1
            proof.append(Hash32(to_hex(self._tree[sibling])))
            node = (node - 1) // 2
        return proof

    def multiproof(self, items: Sequence[int | Sequence[Any]]) -> MultiProof:
        """Return one proof for several leaves (indices into :attr:`values` or values).

        Raises:
            CryptoError: If a leaf is unknown or repeated.
        """
        indices = [self._value_index(i) if isinstance(i, int) else self.index_of(i) for i in items]
        nodes = sorted((self._tree_index[i] for i in indices), reverse=True)
        if len(set(nodes)) != len(nodes):
            raise CryptoError("a multiproof cannot prove the same leaf twice")
        stack, proof, flags = deque(nodes), [], []
        while stack and stack[0] > 0:
            node = stack.popleft()
            sibling = node + 1 if node % 2 else node - 1
            if stack and stack[0] == sibling:
                flags.append(True)
                stack.popleft()
            else:
                flags.append(False)
                proof.append(Hash32(to_hex(self._tree[sibling])))
            stack.append((node - 1) // 2)
        if not nodes:
            proof.append(Hash32(to_hex(self._tree[0])))
        by_node = {self._tree_index[i]: i for i in indices}
        return MultiProof(
            leaves=tuple(Hash32(to_hex(self._tree[n])) for n in nodes),
            proof=tuple(proof),
            proof_flags=tuple(flags),
            values=tuple(self.values[by_node[n]] for n in nodes),
        )

    def verify(self, item: int | Sequence[Any], proof: Sequence[bytes | str]) -> bool:
        """Return whether ``proof`` proves the leaf (index or value) against this root."""
        value = self.values[self._value_index(item)] if isinstance(item, int) else item
        return verify_proof(self._tree[0], leaf_hash(value, self.leaf_encoding), proof)

    def _value_index(self, index: int) -> int:
        if not 0 <= index < len(self.values):
            raise CryptoError(f"leaf index {index} is out of range for {len(self.values)} leaves")
        return index
