"""The exchange log as a Merkle tree, Certificate Transparency style (RFC 9162 section 2.1).

Entries and hashing
    Each leaf is one log entry's canonical bytes (:meth:`exchange.core.log_entry.LogEntry.encode`:
    sorted-key UTF-8 JSON), at the entry's index (``LogEntryRow.idx``, from 0, no gaps).
    With SHA-256 as ``HASH``::

        leaf_hash(entry)  = HASH(0x00 || entry)
        node_hash(l, r)   = HASH(0x01 || l || r)
        MTH({})           = HASH()                      (the empty string)
        MTH({d0})         = leaf_hash(d0)
        MTH(D[n])         = node_hash(MTH(D[0:k]), MTH(D[k:n]))
                            with k the largest power of two smaller than n

    The 0x00 / 0x01 prefixes keep a leaf from ever being read as an inner node
    (second-preimage resistance); the split rule fixes one tree shape per size, so a
    tree head ``(size, root)`` names exactly one sequence of entries.

What lives here
    * :class:`MerkleFrontier`: the right edge of the tree (one subtree root per set
      bit of the size). The hub appends each new leaf in amortised O(1) and gets the
      root in O(log n); the frontier serialises to ``size`` + hashes so a restarted
      hub resumes without re-reading the log.
    * :class:`MerkleTree`: a cache of complete subtree hashes over a :class:`LeafSource`
      (the store's leaf hashes), built once, extended as the log grows. With it,
      :func:`root_at`, :func:`inclusion_proof` and :func:`consistency_proof` (PATH and
      PROOF of RFC 9162 2.1.3.1 / 2.1.4.1) cost O(log n) lookups per call.
    * Pure verification for nodes and auditors: :func:`verify_inclusion`,
      :func:`root_from_inclusion_proof` and :func:`verify_consistency` follow the bit
      algorithms of RFC 9162 2.1.3.2 and 2.1.4.2 step by step; :func:`verify_log`
      recomputes ``(size, root)`` from raw entries in one streaming pass.

No I/O happens here: the hub and the store hand in leaves, the node hands in proofs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from exchange.errors import ExchangeError, InputError

HASH_SIZE = 32
#: MTH({}): the root of the empty log
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256
# A SHA-256 state that has already absorbed the leaf prefix: copying it is cheaper
# than concatenating the prefix to every entry (no per-entry bytes object).
_LEAF_STATE = hashlib.sha256(_LEAF_PREFIX)


class InvalidProof(ExchangeError):
    """A proof that cannot be right whatever the hashes: wrong length, wrong sizes."""

    exit_code = 3
    code = "LOG-BAD-PROOF"


class ProofRequestError(InputError):
    """A proof or root asked for a size or index the log does not have."""

    code = "LOG-BAD-PROOF-REQUEST"


# --------------------------------------------------------------------------- hashing


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry as a leaf."""
    state = _LEAF_STATE.copy()
    state.update(entry)
    return state.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an inner node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162's split: the largest power of two strictly smaller than ``n`` (> 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """The root of consecutive complete subtrees, largest first (the RFC shape)."""
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = _sha256(_NODE_PREFIX + left + root).digest()
    return root


# --------------------------------------------------------------------------- frontier


class MerkleFrontier:
    """The right edge of the tree: what appending and the root need, nothing more.

    ``hashes`` are the roots of the complete subtrees the leaves so far split into,
    largest (leftmost) first: one per set bit of ``size``. Appending merges equal-sized
    subtrees like a binary counter carrying, so it costs one leaf and on average one
    node hash however long the log is.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The right-edge subtree roots, largest first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash (see :func:`leaf_hash`)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        hashes = self._hashes
        carry = self._size
        node = leaf
        while carry & 1:
            node = _sha256(_NODE_PREFIX + hashes.pop() + node).digest()
            carry >>= 1
        hashes.append(node)
        self._size += 1

    def append_entry(self, entry: bytes) -> None:
        """Add the next entry's canonical bytes."""
        self.append(leaf_hash(entry))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add many leaf hashes, in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the leaves so far (:data:`EMPTY_ROOT` when there are none)."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold_right(self._hashes)

    def copy(self) -> MerkleFrontier:
        return MerkleFrontier.from_state(self._size, self._hashes)

    def to_state(self) -> tuple[int, list[bytes]]:
        """``(size, hashes)``: what to persist to resume appending later."""
        return self._size, list(self._hashes)

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> MerkleFrontier:
        """A frontier from :meth:`to_state`; refuses a state that cannot be one."""
        if size < 0:
            raise ValueError("a frontier's size cannot be negative")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}"
            )
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"every frontier hash has {HASH_SIZE} bytes")
        frontier = cls()
        frontier._size = size
        frontier._hashes = [bytes(h) for h in hashes]
        return frontier

    def to_bytes(self) -> bytes:
        """Compact form: the size as 8 bytes big-endian, then the hashes."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleFrontier:
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ValueError("not a serialised frontier")
        size = int.from_bytes(data[:8], "big")
        body = data[8:]
        return cls.from_state(
            size, [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleFrontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()[:16]}...)"


# --------------------------------------------------------------------------- leaf sources


class LeafSource(Protocol):
    """Where the leaf hashes of the log come from: the store, or memory in tests."""

    @property
    def size(self) -> int:
        """How many leaves there are."""
        ...

    def leaves(self, start: int, end: int) -> Sequence[bytes]:
        """The leaf hashes ``start`` to ``end`` (exclusive), in index order."""
        ...


class InMemoryLeaves:
    """Leaf hashes held in memory: for tests, benchmarks and auditors' own copies.

    Stored back to back in one ``bytearray`` (32 bytes a leaf, no object per leaf).
    """

    __slots__ = ("_data",)

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._data = bytearray()
        self.extend(leaves)

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> InMemoryLeaves:
        """Leaves for raw entry bytes (hashed with :func:`leaf_hash`)."""
        source = cls()
        source.extend_entries(entries)
        return source

    @property
    def size(self) -> int:
        return len(self._data) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        self._data += leaf

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def extend_entries(self, entries: Iterable[bytes]) -> None:
        data = self._data
        base = _LEAF_STATE
        for entry in entries:
            state = base.copy()
            state.update(entry)
            data += state.digest()

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(f"no leaf {index} in a log of {self.size}")
        return bytes(self._data[index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def leaves(self, start: int, end: int) -> list[bytes]:
        if not 0 <= start <= end <= self.size:
            raise IndexError(f"no leaves {start}..{end} in a log of {self.size}")
        data = bytes(self._data[start * HASH_SIZE : end * HASH_SIZE])
        return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# --------------------------------------------------------------------------- subtree cache


class MerkleTree:
    """Complete subtree hashes over a :class:`LeafSource`, so proofs cost O(log n).

    Every complete subtree of ``2**level`` leaves aligned at a multiple of its size is
    computed once and kept, level by level, in one ``bytearray`` per level. Any node the
    RFC's PATH and PROOF name is either such a subtree or a right-edge node made of at
    most ``log2(n)`` of them, so a proof needs O(log n) lookups and hashes.

    ``cached_from_level`` trades memory for work: levels below it are recomputed from
    the leaves on demand (about ``2**cached_from_level`` leaves read per proof). At
    the default 1 the cache holds about 32 bytes a leaf (n/2 + n/4 + ... hashes); at 4
    about 4 bytes a leaf, at the price of 16 leaves read and 15 hashes per proof.

    :meth:`sync` hashes the leaves the source gained since the last call; the proof
    functions call it when asked about a size the cache has not reached. One thread
    syncs at a time; readers do not lock, as they only read hashes below the size the
    cache had published before they started (safe under CPython's GIL).
    """

    _CHUNK = 1 << 16  # leaves read from the source per round trip while syncing

    def __init__(self, source: LeafSource, *, cached_from_level: int = 1) -> None:
        if not 1 <= cached_from_level <= 16:
            raise ValueError("cached_from_level must be 1 to 16")
        self._source = source
        self._low = cached_from_level
        # _levels[i] holds the hashes of level _low + i, 32 bytes each, left to right
        self._levels: list[bytearray] = [bytearray()]
        self._synced = 0
        self._lock = threading.Lock()

    # LeafSource, so a MerkleTree can stand wherever a source can
    @property
    def size(self) -> int:
        return self._source.size

    def leaves(self, start: int, end: int) -> Sequence[bytes]:
        return self._source.leaves(start, end)

    @property
    def synced_size(self) -> int:
        """How many leaves the cache covers."""
        return self._synced

    def sync(self) -> int:
        """Hash the leaves added to the source since the last sync; returns the size covered."""
        with self._lock:
            target = self._source.size
            if target <= self._synced:
                return self._synced
            block = 1 << self._low
            bottom = self._levels[0]
            done = (len(bottom) // HASH_SIZE) * block
            # whole blocks only: a partial block at the right edge is hashed on demand
            last = target - target % block
            while done < last:
                end = min(last, done + self._CHUNK)
                bottom += _block_roots(self._source.leaves(done, end), self._low)
                done = end
            self._extend_upper_levels()
            self._synced = target
            return target

    def _extend_upper_levels(self) -> None:
        sha, prefix = _sha256, _NODE_PREFIX
        level = 0
        while len(self._levels[level]) >= 2 * HASH_SIZE:
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            above = self._levels[level + 1]
            have = len(above) // HASH_SIZE
            with memoryview(self._levels[level]) as below:
                can = len(below) // (2 * HASH_SIZE)
                # two siblings are 64 consecutive bytes of the level below
                above += b"".join(
                    [sha(prefix + below[i * 64 : i * 64 + 64]).digest() for i in range(have, can)]
                )
            level += 1

    def complete_subtree(self, level: int, index: int) -> bytes:
        """The root of leaves ``[index * 2**level, (index + 1) * 2**level)``."""
        if level >= self._low:
            row = self._levels[level - self._low]
            offset = index * HASH_SIZE
            if offset + HASH_SIZE <= len(row) and ((index + 1) << level) <= self._synced:
                return bytes(row[offset : offset + HASH_SIZE])
            raise ProofRequestError(f"the subtree {level}/{index} is beyond the synced log")
        start = index << level
        leaves = self._source.leaves(start, start + (1 << level))
        if len(leaves) != 1 << level:
            raise ProofRequestError(f"the subtree {level}/{index} is beyond the log")
        return _block_roots(leaves, level) if level else bytes(leaves[0])

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``, for the ranges PATH and PROOF name.

        Such a range starts at a multiple of a power of two at least its length, so it
        splits into complete aligned subtrees, largest first; folding them from the
        right gives the RFC's shape.
        """
        size = end - start
        if size > 0 and size & (size - 1) == 0 and start % size == 0:  # one complete subtree
            return self.complete_subtree(size.bit_length() - 1, start // size)
        parts = []
        while start < end:
            size = end - start
            # the largest aligned power of two that fits
            level = min((start & -start).bit_length() - 1 if start else 64, size.bit_length() - 1)
            parts.append(self.complete_subtree(level, start >> level))
            start += 1 << level
        return _fold_right(parts)


def _block_roots(leaves: Sequence[bytes], level: int) -> bytes:
    """Roots of consecutive blocks of ``2**level`` leaves, concatenated."""
    sha, prefix = _sha256, _NODE_PREFIX
    nodes = [sha(prefix + leaves[i] + leaves[i + 1]).digest() for i in range(0, len(leaves) - 1, 2)]
    for _ in range(level - 1):
        nodes = [sha(prefix + nodes[i] + nodes[i + 1]).digest() for i in range(0, len(nodes), 2)]
    return b"".join(nodes)


class _Uncached:
    """Subtree roots straight from the leaves: O(n) a call, for small or one-off sources."""

    def __init__(self, source: LeafSource) -> None:
        self._source = source

    def subtree_root(self, start: int, end: int) -> bytes:
        frontier = MerkleFrontier()
        frontier.extend(self._source.leaves(start, end))
        return frontier.root()


def _hasher(source: LeafSource, size: int) -> MerkleTree | _Uncached:
    if isinstance(source, MerkleTree):
        if source.synced_size < size:
            source.sync()
        return source
    return _Uncached(source)


# --------------------------------------------------------------------------- proofs


def root_at(source: LeafSource, size: int) -> bytes:
    """MTH of the first ``size`` leaves: the root a tree head of that size must carry."""
    if not 0 <= size <= source.size:
        raise ProofRequestError(f"the log has {source.size} entries, not {size}")
    if size == 0:
        return EMPTY_ROOT
    return _hasher(source, size).subtree_root(0, size)


def frontier_at(source: LeafSource, size: int) -> MerkleFrontier:
    """The frontier of the first ``size`` leaves, from the cache (to resume appending)."""
    if not 0 <= size <= source.size:
        raise ProofRequestError(f"the log has {source.size} entries, not {size}")
    hasher = _hasher(source, size)
    hashes, start = [], 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            hashes.append(hasher.subtree_root(start, start + (1 << level)))
            start += 1 << level
    return MerkleFrontier.from_state(size, hashes)


def inclusion_proof(source: LeafSource, index: int, tree_size: int) -> list[bytes]:
    """PATH(index, D[tree_size]) of RFC 9162 2.1.3.1: sibling hashes, leaf to root."""
    if not 0 <= index < tree_size <= source.size:
        raise ProofRequestError(
            f"no inclusion proof for entry {index} in a tree of {tree_size} "
            f"(the log has {source.size} entries)"
        )
    hasher = _hasher(source, tree_size)
    path: list[bytes] = []
    low, high = 0, tree_size
    while high - low > 1:
        k = _largest_power_of_two_below(high - low)
        if index - low < k:  # the entry is on the left: the sibling is the right part
            path.append(hasher.subtree_root(low + k, high))
            high = low + k
        else:
            path.append(hasher.subtree_root(low, low + k))
            low += k
    path.reverse()
    return path


def consistency_proof(source: LeafSource, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 2.1.4.1 (empty when old is 0 or new)."""
    if not 0 <= old_size <= new_size <= source.size:
        raise ProofRequestError(
            f"no consistency proof from {old_size} to {new_size} entries "
            f"(the log has {source.size} entries)"
        )
    if old_size in (0, new_size):
        return []
    hasher = _hasher(source, new_size)
    proof: list[bytes] = []
    low, high, m, whole_old_tree = 0, new_size, old_size, True
    # SUBPROOF(m, D[low:high], whole_old_tree), unrolled top-down
    while True:
        if m == high - low:
            if not whole_old_tree:
                proof.append(hasher.subtree_root(low, high))
            break
        k = _largest_power_of_two_below(high - low)
        if m <= k:
            proof.append(hasher.subtree_root(low + k, high))
            high = low + k
        else:
            proof.append(hasher.subtree_root(low, low + k))
            low += k
            m -= k
            whole_old_tree = False
    proof.reverse()
    return proof


# --------------------------------------------------------------------------- verification


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise InvalidProof(f"a hash of {len(h)} bytes where SHA-256 gives {HASH_SIZE}")


def root_from_inclusion_proof(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """The root ``proof`` leads to from ``leaf`` at ``index`` (RFC 9162 2.1.3.2 steps 1-4).

    Raises :class:`InvalidProof` when the proof cannot belong to that index and size
    (index out of range, too many or too few hashes, a hash of the wrong length).
    """
    if index < 0 or index >= tree_size:
        raise InvalidProof(f"entry {index} is not in a tree of {tree_size}")
    _check_hashes(leaf, *proof)
    fn, sn = index, tree_size - 1
    r = leaf
    sha, prefix = _sha256, _NODE_PREFIX
    for p in proof:
        if sn == 0:
            raise InvalidProof("the inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = sha(prefix + p + r).digest()
            # step 4.b.ii: past the right edge's missing levels, up to the next left turn
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha(prefix + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("the inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True when ``proof`` shows ``leaf`` at ``index`` in the tree of ``tree_size`` and ``root``."""
    try:
        computed = root_from_inclusion_proof(leaf, index, tree_size, proof)
    except InvalidProof:
        return False
    return len(root) == HASH_SIZE and computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when ``proof`` shows the tree ``(old_size, old_root)`` is a prefix of the new one.

    RFC 9162 2.1.4.2 for ``0 < old_size < new_size``. The edge cases it leaves out:
    equal sizes need equal roots and an empty proof; from the empty tree, only an empty
    proof and ``old_root`` = :data:`EMPTY_ROOT` (stricter than accepting any old root:
    an honest hub never signs anything else for size 0).
    """
    if not 0 <= old_size <= new_size:
        return False  # a log never shrinks
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof or any(len(c) != HASH_SIZE for c in proof):
        return False  # step 1
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: a power of two is a whole left subtree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    sha, prefix = _sha256, _NODE_PREFIX
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha(prefix + c + fr).digest()
            sr = sha(prefix + c + sr).digest()
            while fn and not fn & 1:  # step 6.b.iii
                fn >>= 1
                sn >>= 1
        else:
            sr = sha(prefix + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # step 7


def verify_log(entries: Iterable[bytes]) -> tuple[int, bytes]:
    """``(size, root)`` of a log given as its entries' canonical bytes, in one pass.

    Compare the result with a signed tree head of the same size: any rewritten,
    dropped, added or reordered entry gives another root. The loop inlines the
    frontier (one leaf hash and on average one node hash per entry, no object kept
    per entry), which is what lets a node check a year of log in seconds.
    """
    sha, leaf_state, prefix = _sha256, _LEAF_STATE, _NODE_PREFIX
    right_edge: list[bytes] = []
    push, pop = right_edge.append, right_edge.pop
    size = 0
    for entry in entries:
        state = leaf_state.copy()
        state.update(entry)
        node = state.digest()
        carry = size
        while carry & 1:
            node = sha(prefix + pop() + node).digest()
            carry >>= 1
        push(node)
        size += 1
    return size, (_fold_right(right_edge) if right_edge else EMPTY_ROOT)
