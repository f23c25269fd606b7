"""Record primitives of the Rust core, exercised through ``keycustody._core``."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from typing_extensions import Buffer

from keycustody import _core
from keycustody.errors import IntegrityError, InvalidInputError, KeyCustodyError

HEADER_LEN = _core.HEADER_LEN
TAG_LEN = _core.TAG_LEN
SCOPE = bytes(range(16))
OTHER_SCOPE = bytes(range(1, 17))
MIB = 1024 * 1024
# Header fields a rewrap may change: key version and wrapped DEK (record.rs layout).
KEY_VERSION = slice(20, 24)
WRAPPED_DEK = slice(72, 132)

KeyTable = dict[int, _core.KeyHandle]


@pytest.fixture
def key() -> _core.KeyHandle:
    return _core.KeyHandle.generate()


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def error_index(exc: BaseException) -> object:
    """The ``.index`` the core sets on batch errors (``None`` when absent)."""
    return getattr(exc, "index", None)


def seal_one(key: _core.KeyHandle, name: Buffer, data: Buffer, version: int = 1) -> bytes:
    [blob] = _core.seal_blobs(key, SCOPE, version, [name], [data])
    return blob


def open_one(keys: KeyTable, name: Buffer, blob: Buffer, scope: Buffer = SCOPE) -> bytes:
    [data] = _core.open_blobs(scope, keys, [name], [blob])
    return data


# --- seal_blobs / open_blobs ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, MIB + 1], ids=["empty", "1B", "4KiB", "1MiB+1"])
def test_blob_round_trip(key: _core.KeyHandle, size: int) -> None:
    data = os.urandom(size)
    blob = seal_one(key, b"notes/a.md", data)
    assert len(blob) == HEADER_LEN + size + TAG_LEN
    assert blob[:4] == b"KC\x01\x01"  # magic, format version, suite
    assert blob[4:20] == SCOPE
    assert _core.header_key_versions([blob[:HEADER_LEN]]) == {1}
    assert data not in blob or size <= 1
    assert open_one({1: key}, b"notes/a.md", blob) == data


def test_seal_is_randomized(key: _core.KeyHandle) -> None:
    """Fresh record id, DEK and nonces per record: equal inputs give unrelated blobs."""
    a, b = _core.seal_blobs(key, SCOPE, 1, [b"n", b"n"], [b"same", b"same"])
    assert a != b
    assert a[24:40] != b[24:40]  # record id
    assert a[132:144] != b[132:144]  # data nonce


def test_empty_batch(key: _core.KeyHandle) -> None:
    assert _core.seal_blobs(key, SCOPE, 1, [], []) == []
    assert _core.open_blobs(SCOPE, {1: key}, [], []) == []
    assert _core.seal_records(key, SCOPE, 1, [], []) == ([], [], [])


@pytest.mark.parametrize(
    "sizes",
    [
        [random.Random(1).randrange(0, 4097) for _ in range(400)],  # many small: batched tasks
        [100 * 1024] * 5 + [0, 1],  # few large: one record per task
    ],
    ids=["400-small", "5-large"],
)
def test_parallel_batch_round_trip(key: _core.KeyHandle, sizes: list[int]) -> None:
    """Batches above 256 KiB run on the rayon pool; order and content must be preserved."""
    assert sum(sizes) > 256 * 1024
    names = [f"dir/{i}.txt".encode() for i in range(len(sizes))]
    datas = [os.urandom(n) for n in sizes]
    blobs = _core.seal_blobs(key, SCOPE, 7, names, datas)
    assert [len(b) for b in blobs] == [HEADER_LEN + n + TAG_LEN for n in sizes]
    assert len({b[24:40] for b in blobs}) == len(blobs)  # distinct record ids
    assert _core.open_blobs(SCOPE, {7: key}, names, blobs) == datas


def test_mixed_key_versions_in_one_batch(key: _core.KeyHandle) -> None:
    k2 = key.rotated()
    b1 = seal_one(key, b"a", b"one", version=1)
    b2 = seal_one(k2, b"b", b"two", version=2)
    assert _core.open_blobs(SCOPE, {1: key, 2: k2}, [b"a", b"b"], [b1, b2]) == [b"one", b"two"]


def test_bytearray_and_memoryview_inputs(key: _core.KeyHandle) -> None:
    """Every buffer type is accepted and gives the same result as bytes."""
    name, data = b"x/y.bin", os.urandom(3000)
    blob = _core.seal_blobs(key, bytearray(SCOPE), 1, [memoryview(name)], [bytearray(data)])[0]
    framed = b"\x00" * 7 + blob + b"\x00" * 5
    interleaved = bytes(b for pair in zip(blob, b"\xaa" * len(blob), strict=True) for b in pair)
    variants: list[Buffer] = [
        blob,
        bytearray(blob),
        memoryview(blob),
        memoryview(framed)[7:-5],  # offset view
        memoryview(interleaved)[::2],  # non-contiguous view
    ]
    for variant in variants:
        got = _core.open_blobs(memoryview(SCOPE), {1: key}, [bytearray(name)], [variant])
        assert got == [data]
    k = os.urandom(32)
    nonce, aad = os.urandom(12), os.urandom(20)
    expected = _core.aes256gcm_seal(k, nonce, aad, data)
    assert _core.aes256gcm_seal(bytearray(k), memoryview(nonce), bytearray(aad), data) == expected
    assert _core.aes256gcm_seal(k, nonce, aad, memoryview(bytearray(data))) == expected
    assert _core.aes256gcm_open(memoryview(k), nonce, aad, bytearray(expected)) == data


def test_non_buffer_inputs_raise_type_error(key: _core.KeyHandle) -> None:
    with pytest.raises(TypeError):
        _core.seal_blobs(key, SCOPE, 1, ["text"], [b"data"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _core.open_blobs(SCOPE, {1: "not a key"}, [b"n"], [b"x" * 300])  # type: ignore[dict-item]


def test_wrong_sizes_raise_invalid_input(key: _core.KeyHandle) -> None:
    with pytest.raises(InvalidInputError, match="scope_id"):
        _core.seal_blobs(key, SCOPE[:15], 1, [b"n"], [b"d"])
    with pytest.raises(InvalidInputError, match="differ in length"):
        _core.seal_blobs(key, SCOPE, 1, [b"n"], [b"d", b"e"])
    for version in (0, -1, 2**32):
        with pytest.raises(InvalidInputError, match="key version"):
            _core.seal_blobs(key, SCOPE, version, [b"n"], [b"d"])


def test_argument_errors_are_invalid_input(key: _core.KeyHandle) -> None:
    calls: list[Callable[[], object]] = [
        lambda: _core.seal_blobs(key, SCOPE[:15], 1, [b"n"], [b"d"]),
        lambda: _core.open_blobs(SCOPE[:15], {1: key}, [b"n"], [b"x" * 300]),
        lambda: _core.seal_blobs(key, SCOPE, 1, [b"n"], [b"d", b"e"]),
        lambda: _core.open_blobs(SCOPE, {1: key}, [b"n"], [b"x" * 300, b"y" * 300]),
    ]
    raised: list[type[BaseException]] = []
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        raised.append(type(info.value))
    assert raised == [InvalidInputError] * len(calls)


# --- tampering -----------------------------------------------------------------------------


def test_every_bit_flip_is_rejected(key: _core.KeyHandle) -> None:
    """ESDK-style "mutate": each of the 2048 single-bit flips of a 64-byte record fails."""
    blob = seal_one(key, b"logs/today.txt", os.urandom(64))
    assert len(blob) * 8 == 2048
    accepted: list[int] = []
    for bit in range(len(blob) * 8):
        try:
            open_one({1: key}, b"logs/today.txt", flip(blob, bit))
        except IntegrityError:
            continue
        accepted.append(bit)
    assert accepted == []


def test_every_truncation_and_extension_is_rejected(key: _core.KeyHandle) -> None:
    blob = seal_one(key, b"n", os.urandom(64))
    accepted = []
    for n in range(len(blob)):
        try:
            open_one({1: key}, b"n", blob[:n])
        except IntegrityError:
            continue
        accepted.append(n)
    assert accepted == []
    for extra in (b"\x00", os.urandom(1), b"\x00" * 16, os.urandom(16)):
        with pytest.raises(IntegrityError):
            open_one({1: key}, b"n", blob + extra)


@pytest.mark.parametrize("wrong", [b"b.py", b"", b"a.py\x00", b"A.py", b"a.py "])
def test_wrong_name_is_rejected(key: _core.KeyHandle, wrong: bytes) -> None:
    blob = seal_one(key, b"a.py", b"print('hi')")
    with pytest.raises(IntegrityError):
        open_one({1: key}, wrong, blob)


def test_wrong_scope_is_rejected(key: _core.KeyHandle) -> None:
    blob = seal_one(key, b"n", b"data")
    with pytest.raises(IntegrityError):
        open_one({1: key}, b"n", blob, scope=OTHER_SCOPE)


@pytest.mark.parametrize(
    "table",
    [
        lambda k: {2: k},  # right key under the wrong version
        lambda k: {},
        lambda k: {1: k.rotated()},  # other wrapping half, same name-index half
        lambda k: {1: _core.KeyHandle.generate()},
    ],
    ids=["version-2", "no-keys", "rotated-as-1", "unrelated"],
)
def test_wrong_key_version_is_rejected(
    key: _core.KeyHandle, table: Callable[[_core.KeyHandle], KeyTable]
) -> None:
    blob = seal_one(key, b"n", b"data", version=1)
    with pytest.raises(IntegrityError) as info:
        open_one(table(key), b"n", blob)
    assert error_index(info.value) == 0


@pytest.mark.parametrize("same_name", [True, False], ids=["same-name", "other-name"])
def test_swapped_headers_are_rejected(key: _core.KeyHandle, same_name: bool) -> None:
    """A header cannot be moved onto another record's ciphertext, even with the same name."""
    names = [b"n", b"n"] if same_name else [b"n1", b"n2"]
    a, b = _core.seal_blobs(key, SCOPE, 1, names, [b"A" * 40, b"B" * 40])
    swapped_a = b[:HEADER_LEN] + a[HEADER_LEN:]
    swapped_b = a[:HEADER_LEN] + b[HEADER_LEN:]
    for name, blob in ((names[0], swapped_a), (names[1], swapped_b)):
        with pytest.raises(IntegrityError):
            open_one({1: key}, name, blob)


@pytest.mark.parametrize(
    ("count", "size", "bad"),
    [(5, 32, 3), (5, 32, 0), (5, 32, 4), (400, 1024, 217), (6, 100 * 1024, 5)],
    ids=["serial-3", "serial-first", "serial-last", "parallel-small-217", "parallel-large-5"],
)
def test_integrity_error_index(key: _core.KeyHandle, count: int, size: int, bad: int) -> None:
    names = [f"r{i}".encode() for i in range(count)]
    blobs = _core.seal_blobs(key, SCOPE, 1, names, [os.urandom(size) for _ in names])
    blobs[bad] = flip(blobs[bad], 8 * (HEADER_LEN + 3))
    with pytest.raises(IntegrityError) as info:
        _core.open_blobs(SCOPE, {1: key}, names, blobs)
    assert error_index(info.value) == bad
    assert f"record {bad}" in str(info.value)
    blobs[bad] = blobs[bad][:10]  # too short to hold a header: rejected before decryption
    with pytest.raises(IntegrityError) as info:
        _core.open_blobs(SCOPE, {1: key}, names, blobs)
    assert error_index(info.value) == bad


def test_error_messages_do_not_leak(key: _core.KeyHandle) -> None:
    name = b"secret-customer-name.txt"
    blob = seal_one(key, name, b"plaintext-marker")
    with pytest.raises(IntegrityError) as info:
        open_one({1: key}, b"other-" + name, flip(blob, 8 * 200))
    message = str(info.value)
    for secret in (name, b"other-" + name, b"plaintext-marker", SCOPE):
        assert secret.decode("latin-1") not in message
        assert secret.hex() not in message


# --- seal_records / open_records / open_names ----------------------------------------------


def sealed_records(
    key: _core.KeyHandle, names: Sequence[bytes], datas: Sequence[bytes]
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    headers, name_cts, bodies = _core.seal_records(key, SCOPE, 1, names, datas)
    assert [len(h) for h in headers] == [HEADER_LEN] * len(names)
    assert [len(c) for c in name_cts] == [len(n) + TAG_LEN for n in names]
    assert [len(b) for b in bodies] == [len(d) + TAG_LEN for d in datas]
    return headers, name_cts, bodies


NAMES = [b"", b"a", "répertoire/fichier ünïcode.txt".encode(), b"x" * 1000]
DATAS = [b"", b"1", os.urandom(5000), os.urandom(70)]


def test_records_round_trip(key: _core.KeyHandle) -> None:
    headers, name_cts, bodies = sealed_records(key, NAMES, DATAS)
    for ct, name in zip(name_cts, NAMES, strict=True):
        assert len(name) < 8 or name not in ct
    assert _core.open_records(SCOPE, {1: key}, NAMES, headers, bodies) == DATAS
    assert _core.open_names(SCOPE, {1: key}, headers, name_cts) == NAMES


@pytest.mark.parametrize("part", ["header", "name_ct", "body"])
def test_records_tamper(key: _core.KeyHandle, part: str) -> None:
    """A flipped bit in one part fails exactly the calls that read that part."""
    headers, name_cts, bodies = sealed_records(key, NAMES, DATAS)
    target = {"header": headers, "name_ct": name_cts, "body": bodies}[part]
    for i in range(len(NAMES)):
        original = target[i]
        for bit in {0, 7, len(original) * 4 + 1, len(original) * 8 - 1}:
            target[i] = flip(original, bit)
            if part in ("header", "body"):
                with pytest.raises(IntegrityError) as info:
                    _core.open_records(SCOPE, {1: key}, NAMES, headers, bodies)
                assert error_index(info.value) == i
            else:
                assert _core.open_records(SCOPE, {1: key}, NAMES, headers, bodies) == DATAS
            if part in ("header", "name_ct"):
                with pytest.raises(IntegrityError) as info:
                    _core.open_names(SCOPE, {1: key}, headers, name_cts)
                assert error_index(info.value) == i
            else:
                assert _core.open_names(SCOPE, {1: key}, headers, name_cts) == NAMES
        target[i] = original


def test_every_header_byte_is_authenticated(key: _core.KeyHandle) -> None:
    headers, name_cts, bodies = sealed_records(key, [b"n"], [b"payload"])
    for pos in range(HEADER_LEN):
        bad = [flip(headers[0], 8 * pos)]
        with pytest.raises(IntegrityError):
            _core.open_records(SCOPE, {1: key}, [b"n"], bad, bodies)
        with pytest.raises(IntegrityError):
            _core.open_names(SCOPE, {1: key}, bad, name_cts)


def test_records_parts_cannot_be_mixed(key: _core.KeyHandle) -> None:
    headers, name_cts, bodies = sealed_records(key, [b"same", b"same"], [b"one", b"two"])
    with pytest.raises(IntegrityError):
        _core.open_records(SCOPE, {1: key}, [b"same"], [headers[0]], [bodies[1]])
    with pytest.raises(IntegrityError):
        _core.open_names(SCOPE, {1: key}, [headers[1]], [name_cts[0]])
    with pytest.raises(IntegrityError):
        _core.open_records(SCOPE, {1: key}, [b"other"], [headers[0]], [bodies[0]])
    with pytest.raises(IntegrityError):  # a name ciphertext is not a valid body
        _core.open_records(SCOPE, {1: key}, [b"same"], [headers[0]], [name_cts[0]])
    with pytest.raises(IntegrityError):
        _core.open_records(OTHER_SCOPE, {1: key}, [b"same"], [headers[0]], [bodies[0]])


def test_blob_and_record_layouts_agree(key: _core.KeyHandle) -> None:
    headers, _, bodies = sealed_records(key, [b"n"], [b"payload"])
    assert open_one({1: key}, b"n", headers[0] + bodies[0]) == b"payload"


# --- rewrap_headers ------------------------------------------------------------------------


def test_rewrap_keeps_bodies_valid(key: _core.KeyHandle) -> None:
    k2 = key.rotated()
    headers, name_cts, bodies = sealed_records(key, NAMES, DATAS)
    new = _core.rewrap_headers(SCOPE, {1: key}, k2, 2, headers)
    assert _core.header_key_versions(new) == {2}
    for old_h, new_h in zip(headers, new, strict=True):
        assert len(new_h) == HEADER_LEN
        assert new_h[WRAPPED_DEK] != old_h[WRAPPED_DEK]
        unchanged = bytearray(new_h)
        unchanged[KEY_VERSION] = old_h[KEY_VERSION]
        unchanged[WRAPPED_DEK] = old_h[WRAPPED_DEK]
        assert unchanged == old_h  # only the key version and the wrapped DEK change
    assert _core.open_records(SCOPE, {2: k2}, NAMES, new, bodies) == DATAS
    assert _core.open_names(SCOPE, {2: k2}, new, name_cts) == NAMES
    assert open_one({2: k2}, NAMES[2], new[2] + bodies[2]) == DATAS[2]
    # The old key does not open the new headers, whatever version it is offered under.
    for old_keys in ({1: key}, {2: key}):
        with pytest.raises(IntegrityError):
            _core.open_records(SCOPE, old_keys, NAMES, new, bodies)
        with pytest.raises(IntegrityError):
            _core.open_names(SCOPE, old_keys, new, name_cts)
    # Nor does the new key open the old headers.
    with pytest.raises(IntegrityError):
        _core.open_records(SCOPE, {1: k2}, NAMES, headers, bodies)


def test_rewrap_rejects_bad_headers(key: _core.KeyHandle) -> None:
    headers, _, _ = sealed_records(key, [b"a", b"b", b"c"], [b"1", b"2", b"3"])
    k2 = key.rotated()
    headers[1] = flip(headers[1], 8 * 100)
    with pytest.raises(IntegrityError) as info:
        _core.rewrap_headers(SCOPE, {1: key}, k2, 2, headers)
    assert error_index(info.value) == 1
    with pytest.raises(IntegrityError):  # wrong old key
        _core.rewrap_headers(SCOPE, {1: k2}, k2, 2, headers[:1])
    with pytest.raises(IntegrityError):  # wrong scope
        _core.rewrap_headers(OTHER_SCOPE, {1: key}, k2, 2, headers[:1])


@pytest.mark.parametrize("size", [64, 32])
def test_rewrap_refuses_a_key_with_another_name_index(key: _core.KeyHandle, size: int) -> None:
    headers, _, bodies = sealed_records(key, [b"n"], [b"payload"])
    unrelated = _core.KeyHandle.generate(size)
    try:
        new = _core.rewrap_headers(SCOPE, {1: key}, unrelated, 2, headers)
    except KeyCustodyError:
        return  # refusing is the correct outcome
    with pytest.raises(KeyCustodyError):
        _core.open_records(SCOPE, {2: unrelated}, [b"n"], new, bodies)
    raise AssertionError("rewrap produced a header that no key can open by name")


# --- KeyHandle -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_key_handle_repr_hides_the_key(size: int) -> None:
    k = _core.KeyHandle.generate(size)
    secret = bytes(k.export_secret())
    assert k.size == len(secret) == size
    for text in (repr(k), str(k), f"{k!r}"):
        assert secret.hex() not in text
        assert secret.hex().upper() not in text
        assert repr(secret) not in text
        assert repr(secret)[2:20] not in text


def test_key_handle_from_secret_round_trip() -> None:
    k = _core.KeyHandle.generate()
    exported = k.export_secret()
    assert isinstance(exported, bytearray)
    same = _core.KeyHandle.from_secret(exported)
    assert same.name_index(b"n") == k.name_index(b"n")
    blob = seal_one(k, b"n", b"data")
    assert open_one({1: same}, b"n", blob) == b"data"


@pytest.mark.parametrize("size", [0, 16, 31, 33, 48, 63, 65, 128])
def test_key_handle_rejects_other_sizes(size: int) -> None:
    with pytest.raises(InvalidInputError):
        _core.KeyHandle.from_secret(bytes(size))
    with pytest.raises(InvalidInputError):
        _core.KeyHandle.generate(size)


@pytest.mark.parametrize("child_size", [32, 64])
def test_key_handle_wrap_unwrap_binds_aad(child_size: int) -> None:
    kek = _core.KeyHandle.generate(32)
    child = _core.KeyHandle.generate(child_size)
    wrapped = kek.wrap(child, b"scope=1;version=3")
    assert len(wrapped) == 12 + child_size + TAG_LEN
    assert bytes(child.export_secret()) not in wrapped
    back = kek.unwrap(wrapped, b"scope=1;version=3")
    assert back.export_secret() == child.export_secret()
    assert kek.wrap(child, b"scope=1;version=3") != wrapped  # fresh nonce each time
    for aad in (b"scope=1;version=4", b"", b"scope=1;version=3\x00"):
        with pytest.raises(IntegrityError):
            kek.unwrap(wrapped, aad)
    with pytest.raises(IntegrityError):
        _core.KeyHandle.generate(32).unwrap(wrapped, b"scope=1;version=3")
    for bit in range(0, len(wrapped) * 8, 7):
        with pytest.raises(IntegrityError):
            kek.unwrap(flip(wrapped, bit), b"scope=1;version=3")
    for n in (0, 12, 28, len(wrapped) - 1):
        with pytest.raises(IntegrityError):
            kek.unwrap(wrapped[:n], b"scope=1;version=3")
    with pytest.raises(IntegrityError):
        kek.unwrap(wrapped + b"\x00", b"scope=1;version=3")


def test_key_handle_rotated_keeps_name_index() -> None:
    k1 = _core.KeyHandle.generate()
    k2 = k1.rotated()
    s1, s2 = bytes(k1.export_secret()), bytes(k2.export_secret())
    assert s1[:32] != s2[:32]
    assert s1[32:] == s2[32:]
    for name in (b"", b"a", b"dir/file.txt"):
        assert k2.name_index(name) == k1.name_index(name)
        assert len(k1.name_index(name)) == 32
    assert k1.name_index(b"a") != k1.name_index(b"b")
    assert _core.KeyHandle.generate().name_index(b"a") != k1.name_index(b"a")
    names: list[Buffer] = [b"", b"a", bytearray(b"dir/file.txt"), memoryview(b"b")]
    assert k1.name_indexes(names) == [k1.name_index(n) for n in names]
    assert k1.name_indexes([]) == []


def test_kek_has_no_name_index_and_cannot_rotate() -> None:
    kek = _core.KeyHandle.generate(32)
    with pytest.raises(InvalidInputError):
        kek.name_index(b"n")
    with pytest.raises(InvalidInputError):
        kek.name_indexes([b"n"])
    with pytest.raises(InvalidInputError):
        kek.rotated()
    with pytest.raises(InvalidInputError):
        _core.seal_blobs(kek, SCOPE, 1, [b"n"], [b"d"])


# --- raw AES-256-GCM against pyca/cryptography ---------------------------------------------


def test_aes256gcm_matches_cryptography() -> None:
    """1000 seeded random cases both ways, plus a few 1 MiB payloads, and a tamper each."""
    rng = random.Random(20240917)
    lengths = [0, 1, 17, 31, 1027]
    cases = [rng.choice(lengths) for _ in range(997)] + [MIB] * 3
    for n in cases:
        k, nonce = rng.randbytes(32), rng.randbytes(12)
        aad, msg = rng.randbytes(rng.choice([0, 1, 13, 64, 300])), rng.randbytes(n)
        ref = AESGCM(k)
        ours = _core.aes256gcm_seal(k, nonce, aad, msg)
        assert ours == ref.encrypt(nonce, msg, aad)
        assert ref.decrypt(nonce, ours, aad) == msg
        assert _core.aes256gcm_open(k, nonce, aad, ours) == msg
        bad = flip(ours, rng.randrange(len(ours) * 8))
        with pytest.raises(IntegrityError):
            _core.aes256gcm_open(k, nonce, aad, bad)
        with pytest.raises(InvalidTag):
            ref.decrypt(nonce, bad, aad)
        other_aad = aad + b"\x00"
        with pytest.raises(IntegrityError):
            _core.aes256gcm_open(k, nonce, other_aad, ours)


# --- properties ----------------------------------------------------------------------------

PROPERTY_KEY = _core.KeyHandle.generate()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(), st.binary(max_size=2048)), max_size=8))
def test_open_seal_round_trip_property(records: list[tuple[str, bytes]]) -> None:
    names = [name.encode("utf-8") for name, _ in records]
    datas = [data for _, data in records]
    blobs = _core.seal_blobs(PROPERTY_KEY, SCOPE, 3, names, datas)
    assert _core.open_blobs(SCOPE, {3: PROPERTY_KEY}, names, blobs) == datas
    headers, name_cts, bodies = _core.seal_records(PROPERTY_KEY, SCOPE, 3, names, datas)
    assert _core.open_records(SCOPE, {3: PROPERTY_KEY}, names, headers, bodies) == datas
    assert _core.open_names(SCOPE, {3: PROPERTY_KEY}, headers, name_cts) == names


def test_open_segments_opens_batches_and_rejects_any_misplaced_segment(
    key: _core.KeyHandle,
) -> None:
    """Several segments open in one call, in parallel, back to back in one buffer or as a
    list of one per item; a batch with one bad segment, a wrong start or a wrong final flag
    returns nothing."""
    seg = _core.SEGMENT_LEN
    datas = [os.urandom(seg) for _ in range(4)] + [os.urandom(1000)]
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"big")
    sealed = [sealer.seal_segment(d, i == len(datas) - 1) for i, d in enumerate(datas)]
    opener = _core.open_stream(SCOPE, {1: key}, b"big", header)
    assert opener.open_segments(0, True, b"".join(sealed)) == b"".join(datas)
    assert opener.open_segments(1, False, b"".join(sealed[1:3])) == b"".join(datas[1:3])
    assert opener.open_segments(4, True, sealed[4]) == datas[4]
    assert opener.open_segments(2, True, sealed[2:]) == b"".join(datas[2:])
    bad = [sealed[0], sealed[1], flip(sealed[2], 8 * 5000), sealed[3]]
    cases: list[tuple[int, bool, list[bytes]]] = [
        (0, False, bad),  # one altered segment
        (1, False, sealed[:2]),  # moved by one position
        (0, True, sealed[:4]),  # not the final segment
        (3, False, sealed[3:]),  # the final segment, not flagged as such
        (0, False, [sealed[0], sealed[1][:-1]]),  # a short segment that is not the last
        (0, False, [sealed[0], sealed[4][:5]]),  # a final segment shorter than its tag
        (0, False, []),
    ]
    for first, last, segments in cases:
        for batch in (b"".join(segments), segments):
            with pytest.raises(IntegrityError):
                opener.open_segments(first, last, batch)
            n = sum(map(len, segments))
            out = bytearray(b"\xff" * max(0, n - 16 * max(1, -(-n // (seg + 16)))))
            with pytest.raises((IntegrityError, InvalidInputError)):
                opener.open_segments_into(first, last, batch, out)
            assert not any(out), "a failed open leaves no plaintext behind"
    with pytest.raises(IntegrityError):  # two segments as one item of a list
        opener.open_segments(0, False, [sealed[0] + sealed[1], sealed[2]])


def test_open_segments_into_writes_the_callers_buffer(key: _core.KeyHandle) -> None:
    seg = _core.SEGMENT_LEN
    datas = [os.urandom(seg), os.urandom(seg), os.urandom(77)]
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"f")
    sealed = b"".join(sealer.seal_segment(d, i == 2) for i, d in enumerate(datas))
    opener = _core.open_stream(SCOPE, {1: key}, b"f", header)
    buffer = bytearray(2 * seg + 100)
    opener.open_segments_into(0, True, sealed, memoryview(buffer)[: 2 * seg + 77])
    assert buffer[: 2 * seg + 77] == b"".join(datas) and buffer[2 * seg + 77 :] == bytes(23)
    for out in (bytearray(10), bytes(2 * seg + 77), memoryview(bytearray(4 * seg))[::2]):
        with pytest.raises(InvalidInputError):
            opener.open_segments_into(0, True, sealed, out)


def test_an_empty_streams_tag_is_checked(key: _core.KeyHandle) -> None:
    """The final segment of an empty stream is a bare 16-byte tag: it must authenticate."""
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"empty")
    tag = sealer.seal_segment(b"", True)
    opener = _core.open_stream(SCOPE, {1: key}, b"empty", header)
    assert opener.open_segments(0, True, tag) == b""
    opener.open_segments_into(0, True, tag, bytearray())
    for bad in (flip(tag, 3), bytes(16)):
        with pytest.raises(IntegrityError):
            opener.open_segments(0, True, bad)
        with pytest.raises(IntegrityError):
            opener.open_segments_into(0, True, bad, bytearray())


def test_read_segments_into_reads_and_opens_a_blob_file(
    key: _core.KeyHandle, tmp_path: Path
) -> None:
    """Segments read straight from a file of sealed segments back to back (a local blob):
    windows of any size, the short final one, and a file that is altered, cut short or
    missing, with nothing left behind in the caller's buffer on failure."""
    seg = _core.SEGMENT_LEN
    datas = [os.urandom(seg) for _ in range(4)] + [os.urandom(77)]
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"blob")
    sealed = b"".join(sealer.seal_segment(d, i == 4) for i, d in enumerate(datas))
    blob = tmp_path / "blob"
    blob.write_bytes(sealed)
    opener = _core.open_stream(SCOPE, {1: key}, b"blob", header)
    for first, n in [(0, 1), (1, 2), (0, 4), (2, 3), (4, 1), (0, 5)]:
        last = first + n == 5
        out = bytearray(sum(len(d) for d in datas[first : first + n]))
        opener.read_segments_into(str(blob), first, last, out)
        assert out == b"".join(datas[first : first + n])
    with pytest.raises(InvalidInputError, match="whole segments"):
        opener.read_segments_into(blob, 0, False, bytearray(seg + 77))
    with pytest.raises(InvalidInputError):
        opener.read_segments_into(blob, 0, True, bytes(seg))  # read-only

    def fails(error: type[Exception], first: int, last: bool, size: int, path: Path) -> None:
        out = bytearray(b"\xff" * size)
        with pytest.raises(error):
            opener.read_segments_into(path, first, last, out)
        assert not any(out), "a failed read leaves no plaintext behind"

    fails(IntegrityError, 3, True, seg, blob)  # flagged final, but it is not
    blob.write_bytes(flip(sealed, 8 * (2 * (seg + 16) + 5)))
    fails(IntegrityError, 0, False, 4 * seg, blob)  # one altered segment spoils the window
    blob.write_bytes(sealed[:-20])
    fails(IntegrityError, 3, True, seg + 77, blob)  # cut short
    fails(FileNotFoundError, 0, False, seg, tmp_path / "missing")
    fails(IsADirectoryError, 0, False, seg, tmp_path)


def test_read_segments_into_keeps_the_segment_read_ahead_for_the_next_call(
    key: _core.KeyHandle, tmp_path: Path
) -> None:
    """``ahead`` reads the next segment's ciphertext during the call and the next call that
    starts there opens it without reading the file again (so a change to the file since is
    not seen; the ciphertext read ahead still authenticates). It is kept for one call, one
    segment and one path only; a failure to read ahead is raised by the call that needs it."""
    seg = _core.SEGMENT_LEN
    sealed_len = seg + 16
    datas = [os.urandom(seg) for _ in range(3)] + [os.urandom(77)]
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"blob")
    sealed = b"".join(sealer.seal_segment(d, i == 3) for i, d in enumerate(datas))
    blob, other = tmp_path / "blob", tmp_path / "other"
    blob.write_bytes(sealed)
    altered_1 = flip(sealed, 8 * (sealed_len + 9))
    other.write_bytes(altered_1)
    opener = _core.open_stream(SCOPE, {1: key}, b"blob", header)

    def read(first: int, ahead: int = 0, path: Path = blob) -> bytes:
        out = bytearray(len(datas[first]))
        opener.read_segments_into(path, first, first == 3, out, ahead)
        return bytes(out)

    assert read(0, sealed_len) == datas[0]
    blob.write_bytes(altered_1)
    assert read(1, sealed_len) == datas[1]  # the segment read ahead, before the change
    with pytest.raises(IntegrityError):
        read(1)  # read again from the file: the read ahead was for segment 2
    blob.write_bytes(sealed)
    assert read(0, sealed_len) == datas[0]
    with pytest.raises(IntegrityError):
        read(1, path=other)  # another file: the segment read ahead from blob is not used
    assert read(2, 16 + 77) == datas[2]  # nothing held for 2: read from the file
    blob.write_bytes(sealed[:-5])
    assert read(3) == datas[3]  # the short last segment, read ahead before the file was cut
    blob.write_bytes(sealed[: 2 * sealed_len + 100])  # cut inside segment 2
    assert read(1, sealed_len) == datas[1]  # reading 2 ahead fails, not this call
    with pytest.raises(IntegrityError, match="shorter"):
        read(2)
    for ahead, first in [(sealed_len + 1, 0), (16 + 77, 3)]:
        with pytest.raises(InvalidInputError, match="ahead"):
            read(first, ahead)


def test_segments_open_into_several_buffers_in_order(key: _core.KeyHandle, tmp_path: Path) -> None:
    """A list of buffers is filled in order (the caller's buffer, then a read-ahead window),
    each but the final one whole segments; a failure zeroes every one of them."""
    seg = _core.SEGMENT_LEN
    datas = [os.urandom(seg) for _ in range(3)] + [os.urandom(5)]
    header, _, sealer = _core.begin_stream(key, SCOPE, 1, b"s")
    sealed = [sealer.seal_segment(d, i == 3) for i, d in enumerate(datas)]
    blob = tmp_path / "blob"
    blob.write_bytes(b"".join(sealed))
    opener = _core.open_stream(SCOPE, {1: key}, b"s", header)
    whole = b"".join(sealed[1:])

    def open_into(outs: list[Buffer]) -> None:
        opener.open_segments_into(1, True, whole, outs)

    def read_into(outs: list[Buffer]) -> None:
        opener.read_segments_into(blob, 1, True, outs)

    for fill in (open_into, read_into):
        outs: list[Buffer] = [bytearray(seg), bytearray(seg), bytearray(5)]
        fill(outs)
        assert [bytes(o) for o in outs] == datas[1:]
        bads: list[list[Buffer]] = [
            [bytearray(seg + 1), bytearray(seg - 1)],  # a segment split between buffers
            [bytearray(seg), bytearray(seg), bytearray(5), bytearray()],  # an empty final one
            [bytearray(2 * seg), bytes(5)],  # read-only
            [],
        ]
        for bad in bads:
            with pytest.raises(InvalidInputError):
                fill(bad)
    blob.write_bytes(flip(b"".join(sealed), 8 * (3 * (seg + 16) + 2)))
    filled = [bytearray(b"\xff" * seg), bytearray(b"\xff" * seg), bytearray(b"\xff" * 5)]
    with pytest.raises(IntegrityError):
        opener.read_segments_into(blob, 1, True, filled)
    assert not any(any(o) for o in filled), "a failed read leaves no plaintext in any buffer"
