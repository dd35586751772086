"""mdr.data.fetch: downloads (mirrors, retries, resume, hashes) against a local HTTP server; safe extraction."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from mdr.data.fetch import (
    CorruptArchiveError,
    HashMismatchError,
    ManualDownloadRequired,
    Source,
    UnsafeArchiveError,
    extraction_dir,
    fetch_sources,
    safe_extract,
)

PAYLOAD = os.urandom(300_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(sources, raw, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("wait", 0)
    return fetch_sources(sources, raw, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")))


# ------------------------------------------------------------------------------------------ download


def test_download_verifies_and_is_not_repeated(http_server, tmp_path):
    url = http_server.add("a.bin", PAYLOAD)
    src = Source("a.bin", [url], sha256=sha(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    rec = fetch([src], tmp_path)["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert rec.sha256 == sha(PAYLOAD) and rec.size == len(PAYLOAD) and rec.verified
    assert leftovers(tmp_path) == []
    n = len(http_server.log)
    again = fetch([src], tmp_path)["a.bin"]
    assert len(http_server.log) == n  # verified in place, not downloaded again
    assert again.sha256 == rec.sha256


def test_present_file_with_wrong_hash_is_quarantined(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"not the file")
    src = Source("a.bin", ["http://127.0.0.1:9/a.bin"], sha256=sha(PAYLOAD))
    with pytest.raises(HashMismatchError) as err:
        fetch([src], tmp_path)
    msg = str(err.value)
    assert "a.bin" in msg and sha(PAYLOAD) in msg and sha(b"not the file") in msg
    assert "run the same command again" in msg.lower()
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.corrupt").read_bytes() == b"not the file"


def test_present_file_with_wrong_size_is_quarantined(tmp_path):
    (tmp_path / "a.bin").write_bytes(PAYLOAD[:1000])
    src = Source("a.bin", [], sha256=sha(PAYLOAD), size=len(PAYLOAD))
    with pytest.raises(HashMismatchError, match="1,000 bytes") as err:
        fetch([src], tmp_path)
    assert f"{len(PAYLOAD):,}" in str(err.value)
    assert (tmp_path / "a.bin.corrupt").exists() and not (tmp_path / "a.bin").exists()


def test_downloaded_file_with_wrong_hash(http_server, tmp_path):
    url = http_server.add("a.bin", b"something else entirely")
    src = Source("a.bin", [url], md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(HashMismatchError) as err:
        fetch([src], tmp_path)
    msg = str(err.value)
    assert hashlib.md5(PAYLOAD).hexdigest() in msg and hashlib.md5(b"something else entirely").hexdigest() in msg
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.corrupt").exists()
    assert leftovers(tmp_path) == []


def test_wrong_hash_on_first_mirror_falls_back_to_second(http_server, tmp_path):
    bad = http_server.add("bad/a.bin", b"tampered")
    good = http_server.add("good/a.bin", PAYLOAD)
    rec = fetch([Source("a.bin", [bad, good], sha256=sha(PAYLOAD))], tmp_path)["a.bin"]
    assert rec.sha256 == sha(PAYLOAD) and (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed(http_server, tmp_path):
    url = http_server.add("big.bin", PAYLOAD)
    http_server.drop_after["/big.bin"] = 100_000
    http_server.drop_times["/big.bin"] = 1
    rec = fetch([Source("big.bin", [url], sha256=sha(PAYLOAD), size=len(PAYLOAD))], tmp_path)["big.bin"]
    assert rec.sha256 == sha(PAYLOAD)
    ranges = http_server.requests_for("big.bin")
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert ranges[1] == "bytes=100000-"  # every byte received before the drop was kept
    assert leftovers(tmp_path) == []


def test_dropped_connection_without_known_size_is_resumed(http_server, tmp_path):
    url = http_server.add("big.bin", PAYLOAD)
    http_server.drop_after["/big.bin"] = 50_000
    http_server.drop_times["/big.bin"] = 2
    rec = fetch([Source("big.bin", [url], sha256=sha(PAYLOAD))], tmp_path)["big.bin"]
    assert rec.sha256 == sha(PAYLOAD)
    assert len(http_server.requests_for("big.bin")) == 3


def test_partial_file_from_an_earlier_run_is_resumed(http_server, tmp_path):
    url = http_server.add("big.bin", PAYLOAD)
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:123_456])
    fetch([Source("big.bin", [url], sha256=sha(PAYLOAD))], tmp_path)
    assert http_server.requests_for("big.bin") == ["bytes=123456-"]
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    url = http_server.add("big.bin", PAYLOAD)
    http_server.no_range.add("/big.bin")
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:1000])
    fetch([Source("big.bin", [url], sha256=sha(PAYLOAD))], tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_dead_first_mirror_then_second(http_server, dead_url, tmp_path):
    good = http_server.add("a.bin", PAYLOAD)
    missing = http_server.url("gone/a.bin")  # 404
    src = Source("a.bin", [dead_url, missing, good], sha256=sha(PAYLOAD))
    fetch([src], tmp_path, retries=2)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert http_server.requests_for("gone/a.bin") == [None]  # a 404 is not retried


def test_html_page_counts_as_a_failed_mirror(http_server, tmp_path):
    quota = http_server.url("drive/a.bin")
    http_server.html.add("/drive/a.bin")
    good = http_server.add("a.bin", PAYLOAD)
    fetch([Source("a.bin", [quota, good], sha256=sha(PAYLOAD))], tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.corrupt").exists()


def test_no_working_mirror_asks_for_manual_download(http_server, dead_url, tmp_path):
    missing = http_server.url("gone/a.bin")
    src = Source("a.bin", [dead_url, missing], sha256=sha(PAYLOAD), size=len(PAYLOAD),
                 manual_hint="the project's web page")
    with pytest.raises(ManualDownloadRequired) as err:
        fetch([src], tmp_path, retries=2)
    msg = str(err.value)
    for part in ("a.bin", f"{len(PAYLOAD):,} bytes", sha(PAYLOAD), "the project's web page", str(tmp_path.absolute()),
                 missing, "404", dead_url):
        assert part in msg, part
    assert err.value.folder == tmp_path and [s.filename for s in err.value.missing] == ["a.bin"]


def test_truncated_file_served_by_mirror(http_server, tmp_path):
    url = http_server.add("a.bin", PAYLOAD[:200_000])  # complete response, but the file itself is short
    with pytest.raises(ManualDownloadRequired, match="200,000 of 300,000"):
        fetch([Source("a.bin", [url], sha256=sha(PAYLOAD), size=len(PAYLOAD))], tmp_path, retries=2)
    assert not (tmp_path / "a.bin").exists()


def test_manual_placement_then_same_call_succeeds(tmp_path):
    srcs = [Source("x.zip", [], manual_hint="a Google Drive folder"), Source("y.txt", [], sha256=sha(b"y\n"))]
    with pytest.raises(ManualDownloadRequired) as err:
        fetch(srcs, tmp_path)
    msg = str(err.value)
    assert "x.zip (no published checksum)" in msg and "a Google Drive folder" in msg
    assert f"y.txt (sha256 {sha(b'y' + bytes([10]))})" in msg and str(tmp_path.absolute()) in msg
    (tmp_path / "x.zip").write_bytes(b"user file")
    (tmp_path / "y.txt").write_bytes(b"y\n")
    recs = fetch(srcs, tmp_path)
    assert recs["x.zip"].sha256 == sha(b"user file") and not recs["x.zip"].verified
    assert recs["y.txt"].verified


def test_download_disabled(http_server, tmp_path):
    url = http_server.add("a.bin", PAYLOAD)
    with pytest.raises(ManualDownloadRequired):
        fetch([Source("a.bin", [url])], tmp_path, download=False)
    assert http_server.log == []


def test_sha256_prefix(http_server, tmp_path):
    url = http_server.add("w-abc.pth", PAYLOAD)
    fetch([Source("w.pth", [url], sha256_prefix=sha(PAYLOAD)[:9])], tmp_path)
    with pytest.raises(HashMismatchError, match="starting 000000000"):
        fetch([Source("v.pth", [url], sha256_prefix="000000000")], tmp_path)


def test_hashes_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    src = Source("a.bin", [], sha256=sha(PAYLOAD))
    fetch([src], tmp_path)
    calls = []
    real_new = hashlib.new
    monkeypatch.setattr(hashlib, "new", lambda *a, **k: calls.append(a) or real_new(*a, **k))
    fetch([src], tmp_path)
    assert calls == []
    os.utime(tmp_path / "a.bin", ns=(1, 1))  # touched -> hashed again
    fetch([src], tmp_path)
    assert calls


# ------------------------------------------------------------------------------------------- extract


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz", links: list[tarfile.TarInfo] = ()):
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for link in links:
            tar.addfile(link)
    return path


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def test_extract_tar_once(tmp_path):
    archive = make_tar(tmp_path / "data.tar.gz", {"top/a.txt": b"a", "top/sub/b.txt": b"b"},
                       links=[link("top/l", "sub/b.txt")])
    dest = safe_extract(archive)
    assert dest == tmp_path / "extracted" / "data" == extraction_dir(archive)
    assert (dest / "top/sub/b.txt").read_bytes() == b"b" and (dest / "top/l").is_symlink()
    (dest / "top/a.txt").unlink()
    assert safe_extract(archive) == dest
    assert not (dest / "top/a.txt").exists()  # marker matched: not extracted again
    os.utime(archive, ns=(5, 5))  # the archive changed: extracted afresh
    safe_extract(archive)
    assert (dest / "top/a.txt").exists()


def test_extract_zip(tmp_path):
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/a.txt", b"a" * 1000)
        zf.writestr("top/dir/", b"")
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / "top/a.txt").read_bytes() == b"a" * 1000 and (dest / "top/dir").is_dir()


def test_folder_without_marker_is_not_trusted(tmp_path):
    archive = make_tar(tmp_path / "d.tgz", {"a.txt": b"a"})
    dest = tmp_path / "extracted" / "d"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from a crashed run")
    safe_extract(archive)
    assert sorted(p.name for p in dest.iterdir()) == [".extracted.json", "a.txt"]


@pytest.mark.parametrize(
    "members,links",
    [
        ({"ok.txt": b"x", "../evil.txt": b"evil"}, []),
        ({"ok.txt": b"x", "a/../../evil.txt": b"evil"}, []),
        ({"ok.txt": b"x", "/tmp/evil-absolute.txt": b"evil"}, []),
        ({"ok.txt": b"x"}, [link("l", "../evil.txt")]),
        ({"ok.txt": b"x"}, [link("l", "/etc/passwd")]),
        ({"ok.txt": b"x"}, [link("a/l", "../../../evil.txt")]),
        ({"ok.txt": b"x"}, [link("h", "../evil.txt", hard=True)]),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "nested-symlink", "hardlink-out"],
)
def test_tar_escapes_are_refused(tmp_path, members, links):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_tar(work / "evil.tar", members, mode="w", links=links)
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        safe_extract(archive, work / "out" / "dest")
    assert not (work / "out" / "dest").exists() and not (work / "out" / "dest.tmp").exists()
    assert not list(tmp_path.rglob("evil*.txt")) and not Path("/tmp/evil-absolute.txt").exists()


def test_zip_escape_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"x")
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "out" / "dest")
    assert not (tmp_path / "out" / "dest").exists() and not (tmp_path / "out" / "dest.tmp").exists()
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_truncated_tar_gz(tmp_path):
    full = make_tar(tmp_path / "full.tgz", {f"f{i}.bin": os.urandom(50_000) for i in range(6)})
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CorruptArchiveError, match="cut.tgz is damaged or truncated"):
        safe_extract(cut)
    assert not extraction_dir(cut).exists() and not extraction_dir(cut).with_name("cut.tmp").exists()


def test_truncated_zip(tmp_path):
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"f{i}.bin", os.urandom(40_000))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(CorruptArchiveError, match="damaged or truncated"):
        safe_extract(cut)
    assert not extraction_dir(cut).exists()


def test_zip_with_bad_crc(tmp_path):
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", b"A" * 5000)
    data = bytearray(archive.read_bytes())
    pos = data.find(b"A" * 100)
    data[pos + 10] = ord("B")
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError):
        safe_extract(archive)
    assert not extraction_dir(archive).exists()


# ------------------------------------------------------------------------------ what failures and records say


def test_failed_mirror_listed_once_with_its_cause(http_server, dead_url, tmp_path):
    src = Source("a.bin", [dead_url], sha256=sha(PAYLOAD))
    with pytest.raises(ManualDownloadRequired) as err:
        fetch([src], tmp_path, retries=3)
    msg = str(err.value)
    assert msg.count(dead_url) == 1
    assert f"tried {dead_url}: [Errno 111] Connection refused (3 attempts)" in msg
    assert "HTTPConnectionPool" not in msg and "object at 0x" not in msg


def test_verified_against_published_hash_only_for_the_published_hash(tmp_path):
    from mdr.data.fetch import PUBLISHED_DIGESTS, published

    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    own = Source("a.bin", sha256=sha(PAYLOAD))  # checked, but against a hash nobody published
    record = fetch([own], tmp_path)["a.bin"]
    assert record.verified and record.to_meta()["verified_against_published_hash"] is False
    try:
        published(own)
        assert fetch([own], tmp_path)["a.bin"].to_meta()["verified_against_published_hash"] is True
    finally:
        PUBLISHED_DIGESTS.discard(sha(PAYLOAD))
    unchecked = Source("a.bin")  # no hash at all: only recorded
    assert fetch([unchecked], tmp_path)["a.bin"].to_meta()["verified_against_published_hash"] is False
