"""Derived records (embeddings, chunks, summaries) die with their source record."""

from __future__ import annotations

import io
import os

import pytest

import keycustody as kc
from dbadmin import RawDB


def test_round_trip_list_and_lineage(acme: kc.Scope) -> None:
    acme.put("src/app.py", b"print('hi')")
    info = acme.put("src/app.py#embedding", b"\x00\x01" * 384, derived_from="src/app.py")
    acme.put("src/app.py#summary", b"prints hi", derived_from="src/app.py")
    assert info.size == 768
    assert acme.get("src/app.py#embedding") == b"\x00\x01" * 384
    assert acme.get_many(["src/app.py#summary", "src/app.py"]) == {
        "src/app.py#summary": b"prints hi",
        "src/app.py": b"print('hi')",
    }
    assert [i.name for i in acme.list()] == [
        "src/app.py",
        "src/app.py#embedding",
        "src/app.py#summary",
    ]
    source = acme.lineage("src/app.py")
    assert source.derivatives == ["src/app.py#embedding", "src/app.py#summary"]
    derived = acme.lineage("src/app.py#embedding")
    assert derived.source == source.dek_id
    assert derived.kek_id == source.kek_id


def test_many_derivatives_of_many_sources(acme: kc.Scope) -> None:
    """put_many(derived_from=) stores a batch in one call; get_many and list open them a
    source at a time, with one source gone among them."""
    for src in ("a.py", "b.py", "c.py"):
        acme.put(src, src.encode())
        infos = acme.put_many(
            ((f"{src}#chunk{i}", f"{src}:{i}".encode()) for i in range(40)), derived_from=src
        )
        assert [i.name for i in infos] == [f"{src}#chunk{i}" for i in range(40)]
    names = [f"{src}#chunk{i}" for i in range(40) for src in ("c.py", "a.py", "b.py")]
    assert acme.get_many(names) == {n: n.replace("#chunk", ":").encode() for n in names}
    acme.delete("b.py")
    assert len(acme.list()) == 2 + 80  # b.py's chunks are unreadable: listed no more
    with pytest.raises(kc.ShreddedError):
        acme.get_many(["a.py#chunk1", "b.py#chunk1"])
    with pytest.raises(kc.InvalidInputError, match="one transaction"):
        acme.put_many([("x", b"x")], derived_from="a.py", commit_every=10)
    with pytest.raises(kc.InvalidInputError):
        acme.put_many([("x", "not bytes")], derived_from="a.py")  # type: ignore[list-item]


@pytest.mark.parametrize("how", ["delete", "replace", "shred"])
def test_deleting_the_source_makes_derivatives_unreadable(
    vault: kc.Vault, acme: kc.Scope, how: str
) -> None:
    scope = vault.scope("acme/repos/api", create=True)
    scope.put("a.py", b"source")
    scope.put("a.py#emb", b"vector", derived_from="a.py")
    scope.put("b.py", b"other")
    scope.put("b.py#emb", b"other vector", derived_from="b.py")
    if how == "delete":
        scope.delete("a.py")
    elif how == "replace":
        scope.put("a.py", b"new version")
    else:
        vault.shred("acme/repos/api", reason="test")
    with pytest.raises(kc.ShreddedError):
        scope.get("a.py#emb")
    if how != "shred":
        assert scope.get("b.py#emb") == b"other vector"  # other derivatives are untouched
        assert "a.py#emb" not in [i.name for i in scope.list()]
        assert vault.purge() == 1  # the orphan goes; the rest stays
        assert scope.get("b.py#emb") == b"other vector"
    del acme


def test_rotation_rewrap_and_reencrypt_keep_derivatives(acme: kc.Scope) -> None:
    acme.put_many((f"f{i}.py", os.urandom(100)) for i in range(20))
    acme.put_stream("big.bin", io.BytesIO(os.urandom(1_500_000)))
    acme.put("f3.py#emb", b"emb3", derived_from="f3.py")
    acme.put("big.bin#chunk", b"chunk", derived_from="big.bin")
    acme.rotate_key()
    acme.rewrap()
    assert acme.get("f3.py#emb") == b"emb3"
    acme.mark_compromised(reason="test")
    acme.reencrypt()
    assert acme.get("f3.py#emb") == b"emb3"
    assert acme.get("big.bin#chunk") == b"chunk"
    assert acme.lineage("f3.py").derivatives == ["f3.py#emb"]


def test_reencrypt_keeps_the_derivatives_of_every_source_in_a_batch(acme: kc.Scope) -> None:
    """Re-encryption re-seals a whole batch's derivatives in one query and one write: sources
    on either side of the 500-id IN-list chunks and of the batch boundary keep their own."""
    acme.put_many((f"f{i}.py", f"source {i}".encode()) for i in range(1_200))
    sources = (0, 499, 500, 999, 1_000, 1_199)
    for i in sources:
        acme.put_many(
            [(f"f{i}.py#emb", f"emb {i}".encode()), (f"f{i}.py#sum", f"sum {i}".encode())],
            derived_from=f"f{i}.py",
        )
    acme.mark_compromised(reason="test")
    assert acme.reencrypt(batch_size=1_000).records_done == 1_200
    for i in sources:
        assert acme.get_many([f"f{i}.py#emb", f"f{i}.py#sum"]) == {
            f"f{i}.py#emb": f"emb {i}".encode(),
            f"f{i}.py#sum": f"sum {i}".encode(),
        }
        assert acme.lineage(f"f{i}.py").derivatives == [f"f{i}.py#emb", f"f{i}.py#sum"]
    assert len(acme.list()) == 1_200 + 2 * len(sources)


def test_derived_misuse(acme: kc.Scope) -> None:
    with pytest.raises(kc.NotFoundError):
        acme.put("x#emb", b"v", derived_from="missing.py")
    acme.put("a.py", b"a")
    acme.put("a.py#emb", b"v", derived_from="a.py")
    with pytest.raises(kc.IntegrityError, match="derived"):
        acme.put("a.py#emb#emb", b"v", derived_from="a.py#emb")
    with pytest.raises(kc.InvalidInputError):
        acme.put("b#emb", "text", derived_from="a.py")  # type: ignore[arg-type]


def test_a_derivative_cannot_be_moved_to_another_source(acme: kc.Scope, raw: RawDB) -> None:
    acme.put("a.py", b"a")
    acme.put("b.py", b"b")
    emb = bytes.fromhex(acme.put("a.py#emb", b"vector", derived_from="a.py").record_id)
    b_id = bytes.fromhex(acme.lineage("b.py").dek_id)
    raw.execute("UPDATE records SET source_id = ? WHERE record_id = ?", (b_id, emb))
    with pytest.raises(kc.IntegrityError):
        acme.get("a.py#emb")
