"""The listing of a drop: which entries are images, safe stems for bad names, refused entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from desra_core.errors import InputImageError
from desra_core.image import write_image
from desra_core.listing import IMAGE_SUFFIXES, MAX_STEM_BYTES, list_image_entries, list_images, safe_stem, stem_problem
from tests.core.test_image import _random_rgb


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", "c.tiff", "d.webp", "e.bmp", "f.jpeg", "g.tif", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.png" / "inner.png").write_bytes(b"")
    found = list_images(tmp_path)
    assert list(found) == ["a", "b", "c", "d", "e", "f", "g"]  # not recursive; hidden and unusable left out
    assert found["a"] == tmp_path / "a.JPG"
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
    entries = list_image_entries(tmp_path)
    assert entries["folder"].problem == f"expected an image file, got a directory (file: {tmp_path / 'folder.png'})"
    assert all(e.problem is None for stem, e in entries.items() if stem != "folder")


def test_list_image_entries_refuses_unsafe_names_under_safe_stems(tmp_path):
    names = [b"caf\xe9.png", b"..%2f..%2fetc.png", b"back\\slash.png", b"new\nline.png", b"x" * 220 + b".png",
             b"-rf caf\xc3\xa9 .png", b"caf%E9.png"]
    for name in names:
        Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name))).write_bytes(b"")
    entries = list_image_entries(tmp_path)
    by_stem = {stem: e.problem for stem, e in entries.items()}
    assert by_stem["-rf café "] is None and by_stem["caf%E9"] is None  # odd but safe names are kept
    assert "not valid UTF-8" in by_stem["caf%E9~2"] and "caf\\xe9.png" in by_stem["caf%E9~2"]
    assert "starting with '.'" in by_stem["%2E%2E%2f..%2fetc"]
    assert "'\\\\'" in by_stem["back%5Cslash"] and "'\\n'" in by_stem["new%0Aline"]
    assert "220 bytes" in by_stem["x" * 200]
    for stem, entry in entries.items():
        assert stem_problem(stem) is None, stem
        assert entry.shown.encode("utf-8") and entry.path.parent == tmp_path
        assert entry.problem is None or "rename the file" in entry.problem


def test_safe_stem():
    assert safe_stem("plain name-1") == "plain name-1"
    assert safe_stem("caf\udce9") == "caf%E9"
    assert safe_stem("../x") == "%2E%2E%2Fx"
    assert safe_stem("..") == "%2E%2E"
    assert safe_stem("a\x00b") == "a%00b"
    assert safe_stem("") == "%"
    assert len(safe_stem("é" * 300).encode()) <= MAX_STEM_BYTES
    assert stem_problem(".x") and stem_problem("a/b") and stem_problem("a\udce9") and not stem_problem("a b")


def test_list_image_entries_symlinks_and_special_files(tmp_path):
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    write_image(outside / "real.png", _random_rgb())
    write_image(drop / "inside.png", _random_rgb())
    (drop / "sub").mkdir()
    write_image(drop / "sub" / "deep.png", _random_rgb())
    (drop / "out.png").symlink_to(outside / "real.png")
    (drop / "rel_out.png").symlink_to(Path("..") / "outside" / "real.png")
    (drop / "in.png").symlink_to("inside.png")
    (drop / "deep.png").symlink_to(drop / "sub" / "deep.png")
    (drop / "dangling.png").symlink_to(drop / "missing.png")
    (drop / "loop.png").symlink_to("loop.png")
    (drop / "to_dir.png").symlink_to(drop / "sub")
    os.mkfifo(drop / "fifo.png")
    entries = list_image_entries(drop)
    problems = {stem: e.problem for stem, e in entries.items()}
    assert problems["inside"] is None
    # Every link is refused, wherever it leads (inside the folder too): no drop file is opened through a link.
    for stem in ("out", "rel_out", "in", "deep", "dangling", "loop", "to_dir"):
        assert "got a symbolic link" in problems[stem] and f"{stem}.png" in problems[stem], problems[stem]
        assert str(outside) not in problems[stem]  # nothing of where it leads is told (or read)
    assert "a FIFO" in problems["fifo"]


def test_list_images_refuses_both_images_of_a_shared_stem(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    entries = list_image_entries(tmp_path)
    assert sorted(entries) == ["a", "a~2", "b"]
    for stem in ("a", "a~2"):
        assert "one image per stem, got 'a.jpg' and 'a.png'" in entries[stem].problem
    assert entries["a"].path.name == "a.jpg" and entries["a~2"].path.name == "a.png"
    assert entries["b"].problem is None


def test_list_images_refuses_missing_folder_and_file(tmp_path):
    with pytest.raises(InputImageError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(InputImageError, match="got a file"):
        list_images(tmp_path / "file.png")
