"""The exchange log's Merkle tree against RFC 9162 and the CT reference vectors.

Known answers come from Certificate Transparency's reference implementation, as kept
by transparency-dev/merkle (testonly/constants.go, proof/verify_test.go): the eight
classic leaves, the roots of sizes 0 to 8, the compact-range hashes, and the known
inclusion and consistency proofs. Beyond those, every size up to 40 is checked,
every index and every old/new pair, against a deliberately naive recursive
implementation of RFC 9162's MTH, PATH and PROOF written here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core.log_entry import LogEntry, LogEvent
from exchange.core.merkle import (
    EMPTY_ROOT,
    InMemoryLeaves,
    InvalidProof,
    LeafSource,
    MerkleFrontier,
    MerkleTree,
    ProofRequestError,
    consistency_proof,
    frontier_at,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
    verify_log,
)

# --------------------------------------------------------------------------- vectors


def h(text: str) -> bytes:
    return bytes.fromhex(text)


LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

#: complete subtree hashes by level, left to right
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

#: MTH of the first n leaves, n = 0..8
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

_N = NODE_HASHES
#: the compact range (frontier) of each size 0..8
COMPACT_TREES: list[list[bytes]] = [
    [],
    [_N[0][0]],
    [_N[1][0]],
    [_N[1][0], _N[0][2]],
    [_N[2][0]],
    [_N[2][0], _N[0][4]],
    [_N[2][0], _N[1][2]],
    [_N[2][0], _N[1][2], _N[0][6]],
    [_N[3][0]],
]

#: (index, tree size, proof); the reference numbers leaves from 1, these from 0
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

#: (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")

# --------------------------------------------------------------------------- reference


def ref_split(n: int) -> int:
    """The largest power of two smaller than n, counted up the slow way."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, word for word."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = ref_split(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = ref_split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b)."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_split(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def path_shape(m: int, n: int) -> list[str]:
    """Which side each sibling of PATH(m, D[n]) sits on: all a verifier combines by."""
    if n == 1:
        return []
    k = ref_split(n)
    return [*path_shape(m, k), "R"] if m < k else [*path_shape(m - k, n - k), "L"]


def subproof_shape(m: int, n: int, b: bool) -> list[str]:
    """The roles of PROOF(m, D[n])'s hashes: start node, left or right sibling."""
    if m == n:
        return [] if b else ["S"]
    k = ref_split(n)
    if m <= k:
        return [*subproof_shape(m, k, b), "R"]
    return [*subproof_shape(m - k, n - k, False), "L"]


def entries(n: int) -> list[bytes]:
    """The eight CT leaves, then more, distinct."""
    return [
        *LEAF_INPUTS,
        *(bytes([i % 256]) * (i % 7 + 1) + i.to_bytes(4, "big") for i in range(8, n)),
    ][:n]


SOURCE_KINDS: dict[str, Callable[[InMemoryLeaves], LeafSource]] = {
    "uncached": lambda leaves: leaves,
    "cached": MerkleTree,
    "cached-from-level-3": lambda leaves: MerkleTree(leaves, cached_from_level=3),
}


@pytest.fixture(params=list(SOURCE_KINDS))
def make_source(request: pytest.FixtureRequest) -> Callable[[list[bytes]], LeafSource]:
    kind = SOURCE_KINDS[request.param]
    return lambda data: kind(InMemoryLeaves.from_entries(data))


def flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8 % len(flipped)] ^= 1 << (bit % 8)
    return bytes(flipped)


# --------------------------------------------------------------------------- hashing and roots


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == NODE_HASHES[0][0] == hashlib.sha256(b"\x00").digest()
    assert node_hash(NODE_HASHES[0][0], NODE_HASHES[0][1]) == NODE_HASHES[1][0]
    # a leaf whose bytes look like two child hashes is still not that inner node
    assert leaf_hash(NODE_HASHES[0][0] + NODE_HASHES[0][1]) != NODE_HASHES[1][0]


def test_empty_log_has_the_empty_root(make_source: Callable[[list[bytes]], LeafSource]) -> None:
    assert ROOTS[0] == EMPTY_ROOT
    assert root_at(make_source([]), 0) == EMPTY_ROOT
    assert MerkleFrontier().root() == EMPTY_ROOT
    assert verify_log([]) == (0, EMPTY_ROOT)


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int, make_source: Callable[[list[bytes]], LeafSource]) -> None:
    source = make_source(LEAF_INPUTS)
    assert root_at(source, size) == ROOTS[size]
    assert verify_log(LEAF_INPUTS[:size]) == (size, ROOTS[size])
    frontier = MerkleFrontier()
    for entry in LEAF_INPUTS[:size]:
        frontier.append_entry(entry)
    assert frontier.root() == ROOTS[size]


def test_frontier_is_the_reference_compact_range() -> None:
    frontier = MerkleFrontier()
    assert list(frontier.hashes) == COMPACT_TREES[0]
    for size, entry in enumerate(LEAF_INPUTS, start=1):
        frontier.append(leaf_hash(entry))
        assert list(frontier.hashes) == COMPACT_TREES[size]
        assert frontier.size == size


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(
    index: int, size: int, proof: list[bytes], make_source: Callable[[list[bytes]], LeafSource]
) -> None:
    source = make_source(LEAF_INPUTS)
    assert inclusion_proof(source, index, size) == proof
    leaf = leaf_hash(LEAF_INPUTS[index])
    assert root_from_inclusion_proof(leaf, index, size, proof) == ROOTS[size]
    assert verify_inclusion(leaf, index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(
    old: int, new: int, proof: list[bytes], make_source: Callable[[list[bytes]], LeafSource]
) -> None:
    source = make_source(LEAF_INPUTS)
    assert consistency_proof(source, old, new) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS[1:])
def test_corrupted_reference_inclusion_proofs_are_refused(
    index: int, size: int, proof: list[bytes]
) -> None:
    """The reference implementation's corruption probes, each must fail."""
    root, leaf = ROOTS[size], leaf_hash(LEAF_INPUTS[index])
    probes = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, b"WrongLeaf", proof),
        (index, size, EMPTY_ROOT, leaf, proof),
        (index, size, SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, b""]),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [b"", *proof]),
        (index, size, root, leaf, [root, *proof]),
        (index, size, root, leaf, proof[:-1]),
        (index, size, root, leaf, [proof[0], SOME_HASH, *proof[1:]]),
    ]
    probes += [
        (index, size, root, leaf, [*proof[:i], flip(proof[i], 3), *proof[i + 1 :]])
        for i in range(len(proof))
    ]
    for probe_index, probe_size, probe_root, probe_leaf, probe_proof in probes:
        assert not verify_inclusion(probe_leaf, probe_index, probe_size, probe_proof, probe_root)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS[1:])
def test_corrupted_reference_consistency_proofs_are_refused(
    old: int, new: int, proof: list[bytes]
) -> None:
    r1, r2 = ROOTS[old], ROOTS[new]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    probes += [
        (old, new, r1, r2, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]])
        for i in range(len(proof))
    ]
    for p_old, p_new, p_r1, p_r2, p_proof in probes:
        assert not verify_consistency(p_old, p_new, p_r1, p_r2, p_proof)


def test_consistency_edge_cases() -> None:
    """Sizes the RFC's algorithm leaves to the caller, as the reference decides them."""
    root1, root2 = SOME_HASH, ROOTS[1]
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 1, EMPTY_ROOT, root2, [])
    assert verify_consistency(1, 1, root2, root2, [])
    assert not verify_consistency(0, 0, root1, root2, [])
    assert not verify_consistency(1, 1, root1, root2, [])
    # stricter than the reference: the empty tree has exactly one root
    assert not verify_consistency(0, 1, root1, root2, [])
    # time travel to the past
    assert not verify_consistency(1, 0, root1, root2, [])
    assert not verify_consistency(2, 1, root1, root2, [])
    # an empty proof between different sizes
    assert not verify_consistency(1, 2, root1, root2, [])
    # roots match but a proof is given where none is due
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    # hashes of the wrong length
    assert not verify_consistency(1, 1, b"", b"", [])


def test_inclusion_edge_cases() -> None:
    leaf = leaf_hash(b"data")
    assert verify_inclusion(leaf, 0, 1, [], leaf)  # a one-entry tree's root is its leaf
    assert not verify_inclusion(leaf, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], leaf)
    assert not verify_inclusion(b"", 0, 1, [], b"")
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 4)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
        with pytest.raises(InvalidProof):
            root_from_inclusion_proof(SOME_HASH, index, size, [])


# --------------------------------------------------------------------------- against the reference


def test_every_proof_up_to_40_entries_matches_the_recursive_reference(
    make_source: Callable[[list[bytes]], LeafSource],
) -> None:
    data = entries(40)
    source = make_source(data)
    for n in range(1, 41):
        prefix = data[:n]
        root = ref_mth(prefix)
        assert root_at(source, n) == root
        assert verify_log(prefix) == (n, root)
        for m in range(n):
            proof = inclusion_proof(source, m, n)
            assert proof == ref_path(m, prefix), (m, n)
            assert verify_inclusion(leaf_hash(data[m]), m, n, proof, root)
        for m in range(n + 1):
            proof = consistency_proof(source, m, n)
            assert proof == ref_proof(m, prefix), (m, n)
            assert verify_consistency(m, n, ref_mth(data[:m]), root, proof), (m, n)


def test_cache_follows_a_growing_log() -> None:
    """Proofs stay right while leaves are added between syncs, partial blocks included."""
    data = entries(300)
    leaves = InMemoryLeaves()
    tree = MerkleTree(leaves, cached_from_level=2)
    done = 0
    for batch in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 69):
        leaves.extend_entries(data[done : done + batch])
        done += batch
        assert root_at(tree, done) == ref_mth(data[:done])
        assert tree.synced_size == done
        for m in {0, done // 3, done - 1}:
            assert inclusion_proof(tree, m, done) == ref_path(m, data[:done])
        for old in {1, done // 2, done - 1}:
            assert consistency_proof(tree, old, done) == ref_proof(old, data[:done])
    fresh = MerkleTree(InMemoryLeaves.from_entries(data))
    assert root_at(fresh, 300) == root_at(tree, 300) == ref_mth(data)


def test_frontier_at_matches_appending() -> None:
    data = entries(70)
    tree = MerkleTree(InMemoryLeaves.from_entries(data))
    frontier = MerkleFrontier()
    for size in range(71):
        assert frontier_at(tree, size) == frontier
        if size < 70:
            frontier.append_entry(data[size])


# --------------------------------------------------------------------------- frontier


def test_frontier_resumes_from_its_persisted_state() -> None:
    data = entries(100)
    whole = MerkleFrontier()
    for entry in data:
        whole.append_entry(entry)
    first = MerkleFrontier()
    for entry in data[:37]:
        first.append_entry(entry)
    size, hashes = first.to_state()
    resumed = MerkleFrontier.from_state(size, hashes)
    again = MerkleFrontier.from_bytes(first.to_bytes())
    for frontier in (resumed, again):
        for entry in data[37:]:
            frontier.append_entry(entry)
        assert frontier == whole
        assert frontier.root() == ref_mth(data)
    assert first.copy() == first
    assert first.copy() is not first


def test_impossible_frontier_states_are_refused() -> None:
    with pytest.raises(ValueError, match="has 2 hashes"):
        MerkleFrontier.from_state(3, [SOME_HASH])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleFrontier.from_state(1, [b"short"])
    with pytest.raises(ValueError, match="negative"):
        MerkleFrontier.from_state(-1, [])
    with pytest.raises(ValueError, match="not a serialised frontier"):
        MerkleFrontier.from_bytes(b"\x00" * 9)
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleFrontier().append(b"not a hash")


def test_frontier_keeps_one_hash_per_set_bit_of_a_huge_size() -> None:
    """Appending stays O(log n) in time and memory however long the log is."""
    size = 2**40 - 1
    frontier = MerkleFrontier.from_state(size, [SOME_HASH] * 40)
    frontier.append(SOME_HASH)  # carries through all forty levels at once
    assert frontier.size == 2**40
    assert len(frontier.hashes) == 1
    frontier.append(SOME_HASH)
    assert len(frontier.hashes) == 2


def test_out_of_range_requests_are_refused() -> None:
    source = MerkleTree(InMemoryLeaves.from_entries(entries(10)))
    with pytest.raises(ProofRequestError):
        root_at(source, 11)
    with pytest.raises(ProofRequestError):
        inclusion_proof(source, 10, 10)
    with pytest.raises(ProofRequestError):
        inclusion_proof(source, 0, 11)
    with pytest.raises(ProofRequestError):
        inclusion_proof(source, -1, 5)
    with pytest.raises(ProofRequestError):
        consistency_proof(source, 6, 5)
    with pytest.raises(ProofRequestError):
        consistency_proof(source, 5, 11)


# --------------------------------------------------------------------------- properties


@st.composite
def trees(draw: st.DrawFn, max_size: int = 300) -> tuple[list[bytes], MerkleTree]:
    size = draw(st.integers(min_value=1, max_value=max_size))
    seed = draw(st.binary(min_size=1, max_size=8))
    data = [seed + i.to_bytes(4, "big") for i in range(size)]
    return data, MerkleTree(InMemoryLeaves.from_entries(data))


def single_bit_changes(value: int) -> list[int]:
    return [value ^ (1 << bit) for bit in range(max(value.bit_length(), 1) + 2)]


@settings(max_examples=150, deadline=None)
@given(tree=trees(), data=st.data())
def test_any_inclusion_proof_verifies_and_any_single_bit_change_fails(
    tree: tuple[list[bytes], MerkleTree], data: st.DataObject
) -> None:
    entries_, source = tree
    n = data.draw(st.integers(min_value=1, max_value=len(entries_)), label="tree size")
    m = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    root = root_at(source, n)
    leaf = leaf_hash(entries_[m])
    proof = inclusion_proof(source, m, n)
    assert verify_inclusion(leaf, m, n, proof, root)
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    for i in range(len(proof)):
        assert not verify_inclusion(
            leaf, m, n, [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]], root
        )
    assert not verify_inclusion(leaf, m, n, proof, flip(root, bit))
    assert not verify_inclusion(flip(leaf, bit), m, n, proof, root)
    for other in single_bit_changes(m):
        assert not verify_inclusion(leaf, other, n, proof, root), other
    # Another size verifies only where the proof's shape, hence the computation, is
    # the same; the signed tree head binds the root to its true size anyway.
    for other in single_bit_changes(n):
        same_shape = m < other and path_shape(m, other) == path_shape(m, n)
        assert verify_inclusion(leaf, m, other, proof, root) == same_shape, other


@settings(max_examples=150, deadline=None)
@given(tree=trees(), data=st.data())
def test_any_consistency_proof_verifies_and_any_single_bit_change_fails(
    tree: tuple[list[bytes], MerkleTree], data: st.DataObject
) -> None:
    _, source = tree
    new = data.draw(st.integers(min_value=1, max_value=source.size), label="new size")
    old = data.draw(st.integers(min_value=1, max_value=new), label="old size")
    old_root, new_root = root_at(source, old), root_at(source, new)
    proof = consistency_proof(source, old, new)
    assert verify_consistency(old, new, old_root, new_root, proof)
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    for i in range(len(proof)):
        changed = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
        assert not verify_consistency(old, new, old_root, new_root, changed)
    assert not verify_consistency(old, new, flip(old_root, bit), new_root, proof)
    assert not verify_consistency(old, new, old_root, flip(new_root, bit), proof)

    def shape(m: int, n: int) -> list[str] | None:
        return subproof_shape(m, n, True) if 0 < m < n else None

    for other in single_bit_changes(old):
        same_shape = shape(old, new) is not None and shape(other, new) == shape(old, new)
        assert verify_consistency(other, new, old_root, new_root, proof) == same_shape, other
    for other in single_bit_changes(new):
        same_shape = shape(old, new) is not None and shape(old, other) == shape(old, new)
        assert verify_consistency(old, other, old_root, new_root, proof) == same_shape, other


# --------------------------------------------------------------------------- attacks


def log_entries(n: int) -> list[bytes]:
    return [
        LogEntry(
            event=LogEvent.ACCEPTED if i % 3 == 0 else LogEvent.DELIVERED,
            hub_time_us=1_767_225_600_000_000 + i,
            message_id=f"msg-{i // 3:06d}",
            kind="request",
            sender="AL.CTD",
            recipients=("RS.CTU", "ME.ARO"),
            channel="ct",
            crime_area="terrorism",
            individuals=1,
            unit="" if i % 3 == 0 else "RS.CTU",
        ).encode()
        for i in range(n)
    ]


def test_rewritten_entry_changes_the_root() -> None:
    honest = log_entries(100)
    size, signed_root = verify_log(honest)
    honest_tree = MerkleTree(InMemoryLeaves.from_entries(honest))
    rewritten = list(honest)
    # the hub hides that a message concerned two persons, not one
    entry = LogEntry.decode(honest[42])
    rewritten[42] = replace(entry, individuals=2).encode()
    assert verify_log(rewritten) != (size, signed_root)
    # the proof a node kept for the original entry does not carry the rewritten one
    proof = inclusion_proof(honest_tree, 42, size)
    assert verify_inclusion(leaf_hash(honest[42]), 42, size, proof, signed_root)
    assert not verify_inclusion(leaf_hash(rewritten[42]), 42, size, proof, signed_root)
    # and the rewritten log cannot prove its entry under the head the node holds
    forged_tree = MerkleTree(InMemoryLeaves.from_entries(rewritten))
    forged_proof = inclusion_proof(forged_tree, 42, size)
    assert not verify_inclusion(leaf_hash(rewritten[42]), 42, size, forged_proof, signed_root)


def test_forked_history_is_caught_by_consistency_proof() -> None:
    history = log_entries(120)
    old_size, old_root = verify_log(history[:50])  # the head a node saw yesterday
    honest = MerkleTree(InMemoryLeaves.from_entries(history))
    forked_history = [*history[:10], b'{"event":"erased","v":1}', *history[11:]]
    forked = MerkleTree(InMemoryLeaves.from_entries(forked_history))
    new_size = 120
    honest_proof = consistency_proof(honest, old_size, new_size)
    assert verify_consistency(old_size, new_size, old_root, root_at(honest, new_size), honest_proof)
    forked_root = root_at(forked, new_size)
    forked_proof = consistency_proof(forked, old_size, new_size)
    assert not verify_consistency(old_size, new_size, old_root, forked_root, forked_proof)
    # nor does the honest proof paper over the forked root
    assert not verify_consistency(old_size, new_size, old_root, forked_root, honest_proof)


def test_truncated_log_is_caught() -> None:
    history = log_entries(90)
    seen_size, seen_root = verify_log(history[:80])  # the head a node holds
    truncated = history[:60]
    # served as is: fewer entries than the head the node holds, which no proof mends
    assert verify_log(truncated)[0] < seen_size
    truncated_tree = MerkleTree(InMemoryLeaves.from_entries(truncated))
    assert not verify_consistency(
        seen_size,
        60,
        seen_root,
        root_at(truncated_tree, 60),
        consistency_proof(truncated_tree, 0, 60),
    )
    # truncated, then grown back past the old size with other entries
    regrown = [*truncated, *log_entries(200)[150:180]]
    regrown_tree = MerkleTree(InMemoryLeaves.from_entries(regrown))
    proof = consistency_proof(regrown_tree, seen_size, 90)
    assert not verify_consistency(seen_size, 90, seen_root, root_at(regrown_tree, 90), proof)
