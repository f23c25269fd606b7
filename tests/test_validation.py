"""Input checks: the batch fast path of check_items agrees with the item-by-item checks."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycustody import _core
from keycustody.errors import InvalidInputError
from keycustody.validation import (
    MAX_NAME_BYTES,
    check_data,
    check_items,
    encode_name,
    encode_names,
)

LIMIT = 64

names = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8),
    st.just(""),
    st.just("a\x00b"),
    st.just("\ud800"),  # a lone surrogate: not encodable
    st.just("n" * (MAX_NAME_BYTES + 1)),
    st.integers(),
    st.binary(max_size=4),
)
datas = st.one_of(
    st.binary(max_size=LIMIT + 2),
    st.binary(max_size=LIMIT + 2).map(bytearray),
    st.binary(max_size=LIMIT + 2).map(lambda b: memoryview(b)),
    st.text(max_size=4),
    st.none(),
)
items = st.one_of(
    st.tuples(names, datas),
    st.tuples(names, datas).map(list),
    st.tuples(names, datas, datas),
    st.tuples(names),
)


def item_by_item(batch: list[Any]) -> tuple[list[Any], list[bytes], list[Any]]:
    """The reference: every item checked on its own."""
    for item in batch:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidInputError("items must be (name, data) pairs")
    raw = [encode_name(i[0]) for i in batch]
    return [i[0] for i in batch], raw, [check_data(i[1], LIMIT) for i in batch]


@settings(max_examples=400, deadline=None)
@given(st.lists(items, max_size=6))
def test_check_items_agrees_with_item_by_item_checks(batch: list[Any]) -> None:
    try:
        expected = item_by_item(batch)
    except InvalidInputError:
        with pytest.raises(InvalidInputError):
            check_items(batch, LIMIT)
        return
    assert check_items(batch, LIMIT) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(names, max_size=6))
def test_encode_names_agrees_with_encode_name(batch: list[Any]) -> None:
    """The batch path takes and refuses exactly what the name-by-name check does, with its
    message (the first invalid name's)."""
    try:
        expected = [encode_name(n) for n in batch]
    except InvalidInputError as exc:
        with pytest.raises(InvalidInputError, match=re.escape(str(exc))):
            encode_names(batch)
        return
    assert encode_names(batch) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=LIMIT))))
def test_valid_batches_pass_through_unchanged(batch: list[tuple[str, bytes]]) -> None:
    batch = [(n, d) for n, d in batch if "\x00" not in n and n.isprintable()]
    got_names, raw, got_datas = check_items(batch, LIMIT)
    assert got_names == [n for n, _ in batch]
    assert raw == [n.encode() for n, _ in batch]
    assert all(a is b for a, (_, b) in zip(got_datas, batch, strict=True))


KEY = _core.KeyHandle.generate()
SCOPE_ID = bytes(range(16))


@settings(max_examples=400, deadline=None)
@given(st.lists(items, max_size=6))
def test_seal_and_open_items_take_exactly_what_check_items_takes(batch: list[Any]) -> None:
    """Scope.seal_many's and open_many's one-pass Rust read of their pairs: they seal or open
    a batch only if check_items accepts it (else None, having asked for no key; check_items
    then names the bad item), and open_items opens what seal_items sealed."""
    asked: list[set[int]] = []

    def keys_for(versions: set[int]) -> dict[int, _core.KeyHandle]:
        asked.append(versions)
        return {1: KEY}

    try:
        names, raw, datas = check_items(batch, LIMIT)
    except InvalidInputError:
        assert _core.seal_items(KEY, SCOPE_ID, 1, batch, LIMIT) is None
        assert _core.open_items(SCOPE_ID, keys_for, batch, LIMIT) is None
        assert asked == []
        return
    blobs = _core.seal_items(KEY, SCOPE_ID, 1, batch, LIMIT)
    assert blobs is not None
    assert _core.open_blobs(SCOPE_ID, {1: KEY}, raw, blobs) == [bytes(d) for d in datas]
    pairs = list(zip(names, blobs, strict=True))
    assert _core.open_items(SCOPE_ID, keys_for, pairs, LIMIT + 256) == [bytes(d) for d in datas]
    assert asked == [{1} if batch else set()]
