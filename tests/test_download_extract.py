"""Archive extraction can never write outside its folder, and refuses bombs by ratio.

Regression tests of an outside audit: a chain of zip symlinks that each look inside when read as
text let a later member overwrite the workflow's own Snakefile next to the destination.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from segvol.download.extract import (
    Limits,
    check_integrity,
    extract_archive,
    extract_into,
)

LINK_CHAIN = [("l0", "."), ("l1", "l0/.."), ("l2", "l1/.."), ("l3", "l2/..")]


def _zip_with_links(path: Path, links, files) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix: the mode bits below are honoured
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, target)
        for name, data in files:
            bundle.writestr(name, data)
    return path


def _project(tmp_path: Path) -> tuple[Path, Path]:
    """A workflow folder with its Snakefile, and the download destination two levels below it."""
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    (project / "Snakefile").write_text("rule all: pass\n")
    return project, project / "data" / "raw" / "Evil"


def test_zip_link_chain_cannot_overwrite_the_snakefile(tmp_path):
    project, dest = _project(tmp_path)
    archive = _zip_with_links(tmp_path / "evil.zip", LINK_CHAIN, [("l3/Snakefile", b"shell('rm -rf ~')\n")])
    with pytest.raises(ValueError, match="evil.zip: member 'l3/Snakefile' lies under the link 'l3'; refused"):
        extract_archive(archive, dest)
    assert (project / "Snakefile").read_text() == "rule all: pass\n"
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == []
    assert sorted(p.name for p in project.iterdir()) == ["Snakefile", "data"]
    # The chain on its own is refused too: its links resolve through each other, not to files.
    chain = _zip_with_links(tmp_path / "chain.zip", LINK_CHAIN, [("fine.txt", b"1")])
    with pytest.raises(ValueError, match=r"chain.zip: link 'l0' -> '\.' does not lead to a file of the archive"):
        extract_archive(chain, dest)
    assert not dest.exists()


def test_zip_member_under_a_link_is_refused_even_with_a_harmless_link(tmp_path):
    _, dest = _project(tmp_path)
    archive = _zip_with_links(tmp_path / "a.zip", [("d", "real")], [("real/x.txt", b"1"), ("d/y.txt", b"2")])
    with pytest.raises(ValueError, match="member 'd/y.txt' lies under the link 'd'"):
        extract_archive(archive, dest)
    assert not dest.exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_link_chain_cannot_escape(tmp_path, kind):
    project, dest = _project(tmp_path)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as bundle:
        for name, target in LINK_CHAIN:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            bundle.addfile(info)
        info = tarfile.TarInfo("l3/Snakefile")
        payload = b"evil\n"
        info.size = len(payload)
        bundle.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="evil.tar: member 'l3/Snakefile' lies under the link 'l3'; refused"):
        extract_archive(archive, dest)
    assert (project / "Snakefile").read_text() == "rule all: pass\n"
    assert not dest.exists()


def test_links_to_files_become_copies_never_links(tmp_path):
    archive = _zip_with_links(
        tmp_path / "ok.zip", [("d/b.txt", "a.txt"), ("c.txt", "d/b.txt")], [("d/a.txt", b"hello")]
    )
    out = extract_archive(archive, tmp_path / "out")
    for name in ("d/a.txt", "d/b.txt", "c.txt"):
        assert (out / name).read_bytes() == b"hello"
        assert not (out / name).is_symlink()
    # A link to a folder is not a file of the archive: refused rather than followed.
    folder_link = _zip_with_links(tmp_path / "dir.zip", [("e", "d")], [("d/a.txt", b"x")])
    with pytest.raises(ValueError, match="does not lead to a file of the archive"):
        extract_archive(folder_link, tmp_path / "out2")


def test_writing_never_follows_a_link_already_on_disk(tmp_path):
    """Whatever is on disk (a link a previous source left, a hard link to a kept download), a
    member is never written through it: the check happens when the file is opened."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"downloaded")
    os.link(kept, dest / "plain.bin")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("sub/x.txt", b"1")
    with pytest.raises(ValueError, match="'sub/x.txt' would be written through 'sub'"):
        extract_into(archive, dest)
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("plain.bin", b"overwritten")
    with pytest.raises(ValueError, match="'plain.bin' already exists"):
        extract_into(archive, dest)
    assert list(outside.iterdir()) == [] and kept.read_bytes() == b"downloaded"


def _zeros_zip(path: Path, sizes: dict[str, int]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, size in sizes.items():
            with bundle.open(name, "w") as sink:
                for start in range(0, size, 1 << 22):
                    sink.write(bytes(min(1 << 22, size - start)))
    return path


def test_zip_bomb_by_ratio_is_refused_under_the_default_limits(tmp_path):
    """A zip of ~64 KiB expanding to 64 MiB (the ratio of a 1 MiB zip expanding to 1 GiB) is
    refused before any byte is written, although its total is far below max_total_bytes."""
    archive = _zeros_zip(tmp_path / "bomb.zip", {"zeros.bin": (64 << 20) + 1})
    assert archive.stat().st_size < 128 << 10
    with pytest.raises(
        ValueError, match=r"bomb.zip: member 'zeros.bin' unpacks \d+ bytes into 67108865 \(ratio \d+, limit 200\)"
    ):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ratio_limit_per_member_and_overall(tmp_path):
    members = {f"m{i}.bin": 200_000 for i in range(4)}
    archive = _zeros_zip(tmp_path / "many.zip", members)
    # Each member stays under the per-member floor, the whole archive does not.
    limits = Limits(max_ratio=50, ratio_floor_bytes=300_000)
    with pytest.raises(ValueError, match=r"many.zip: unpacks \d+ bytes into 800000 \(ratio \d+, limit 50\)"):
        extract_archive(archive, tmp_path / "out", limits)
    with pytest.raises(ValueError, match=r"member 'm0.bin' unpacks"):
        extract_archive(archive, tmp_path / "out", Limits(max_ratio=50, ratio_floor_bytes=100_000))
    # The same ratio is fine when the limit allows it, and so is a stored (uncompressed) zip.
    assert extract_archive(archive, tmp_path / "out", Limits(max_ratio=1e6)).is_dir()
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w") as bundle:
        bundle.writestr("m.bin", bytes(800_000))
    assert extract_archive(stored, tmp_path / "out2", limits).is_dir()


def test_tar_gz_bomb_by_overall_ratio(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 2_000_000
        bundle.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ValueError, match="bomb.tar.gz: unpacks .* refused as an archive bomb"):
        extract_archive(archive, tmp_path / "out", Limits(max_ratio=100, ratio_floor_bytes=1_000_000))
    assert not (tmp_path / "out").exists()


def test_many_link_copies_count_towards_the_total(tmp_path):
    archive = _zip_with_links(tmp_path / "copies.zip", [(f"c{i}", "big") for i in range(10)], [("big", bytes(1000))])
    with pytest.raises(ValueError, match="11000 unpacked bytes exceed the limit of 5000"):
        extract_archive(archive, tmp_path / "out", Limits(max_total_bytes=5000))


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_integrity_check_finds_truncation(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    payload = os.urandom(100_000)
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as bundle:
            bundle.writestr("a.bin", payload)
    else:
        with tarfile.open(path, "w:gz") as bundle:
            info = tarfile.TarInfo("a.bin")
            info.size = len(payload)
            bundle.addfile(info, io.BytesIO(payload))
    check_integrity(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(ValueError, match=f"a{suffix}: corrupt"):
        check_integrity(path)
    # A flipped byte inside the data is caught by the CRC.
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    with pytest.raises(ValueError, match=f"a{suffix}: corrupt"):
        check_integrity(path)


def test_encrypted_zip_member_is_a_one_line_error(tmp_path):
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a.txt", b"secret")
    data = bytearray(archive.read_bytes())
    # Set the "encrypted" flag bit in the central directory entry (zipfile refuses to read it).
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="locked.zip: cannot unpack: .*encrypted"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
