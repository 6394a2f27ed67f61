"""ArtifactStore: the same calls and results on a local folder and an S3 bucket (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pynomaly.errors import InputError
from tasks import store as store_module
from tasks.store import ArtifactStore, s3_client


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An in-process moto S3 (no endpoint), with the per-endpoint client cache emptied around it."""
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    store_module._clients.clear()
    with mock_aws():
        s3_client().create_bucket(Bucket="bucket")
        yield
    store_module._clients.clear()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    request.getfixturevalue("s3")
    return ArtifactStore("s3://bucket/prefix", encrypted=True)


def test_put_get_list_sizes_delete(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("a/one.json", b"{}")
    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 10)
    assert store.put_file("a/b/two.bin", source) == store.uri("a/b/two.bin")
    store.put_bytes("c.txt", b"three")

    assert store.exists("a/one.json") and not store.exists("a/none")
    assert store.get_bytes("a/b/two.bin") == b"x" * 10
    assert store.list() == ["a/b/two.bin", "a/one.json", "c.txt"]
    assert store.sizes("a/") == {"a/b/two.bin": 10, "a/one.json": 2}
    with store.open("c.txt") as (fh, size):
        assert (fh.read(), size) == (b"three", 5)
    assert store.download("c.txt", tmp_path / "out" / "c.txt").read_bytes() == b"three"

    store.delete("c.txt")
    store.delete("c.txt")  # already gone: no error
    assert store.delete_prefix("a/") == 2
    assert store.list() == [] and not store.versioned()


def test_missing_key_is_one_input_error(store: ArtifactStore) -> None:
    with pytest.raises(InputError, match="not found in the artifact store|no such S3 object"):
        store.get_bytes("nothing/here")


def test_one_client_per_endpoint(s3: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert s3_client() is s3_client(None) is s3_client("")
    assert s3_client("http://127.0.0.1:9") is not s3_client()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    # Made without credentials: not kept, so credentials set later are used
    assert s3_client("http://127.0.0.1:8") is not s3_client("http://127.0.0.1:8")


def test_backup_store_objects_are_encrypted_at_rest(s3: None) -> None:
    ArtifactStore("s3://bucket/b", encrypted=True).put_bytes("k", b"v")
    ArtifactStore("s3://bucket/a").put_bytes("k", b"v")
    head = s3_client().head_object
    assert head(Bucket="bucket", Key="b/k").get("ServerSideEncryption") == "AES256"
    assert "ServerSideEncryption" not in head(Bucket="bucket", Key="a/k")


def test_object_versions_listed_fetched_and_made_current(s3: None, tmp_path: Path) -> None:
    s3_client().put_bucket_versioning(
        Bucket="bucket", VersioningConfiguration={"Status": "Enabled"}
    )
    store = ArtifactStore("s3://bucket/p")
    assert store.versioned()
    store.put_bytes("m.pkl", b"first")
    (first,) = store.versions()
    store.put_bytes("m.pkl", b"second")
    assert store.versions()[0]["version_id"] != first["version_id"]
    assert first | {"version_id": None} == {
        "key": "m.pkl",
        "size": 5,
        "etag": first["etag"],
        "version_id": None,
    }

    fetched = store.download("m.pkl", tmp_path / "m.pkl", first["version_id"])
    assert fetched.read_bytes() == b"first"
    store.make_current("m.pkl", first["version_id"])
    assert store.get_bytes("m.pkl") == b"first"


def test_unreachable_endpoint_is_one_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = ArtifactStore("s3://bucket/p", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(InputError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        store.list()
