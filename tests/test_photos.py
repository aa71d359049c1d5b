"""The 'photos' image source: its manifest, the Qt resource bundles it reads in place, and what is installed."""

import csv
import hashlib
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest

from data import photos
from data.images import PhotoSource, open_source, split_names
from data.photos import FIELDS, MANIFEST, rcc_index, read_manifest, read_rcc_member
from helper import InputError


def write_rcc(path, files):
    """A Qt resource bundle (format 3) holding {"/dir/name": (bytes, zlib_compressed)}, laid out as rcc does:
    the children of a directory are consecutive nodes."""
    tree = {}
    for p in files:
        node = tree
        for part in p.strip("/").split("/")[:-1]:
            node = node.setdefault(part, {})
        node[p.strip("/").split("/")[-1]] = p
    names, data, nodes = b"", b"", []

    def name_offset(name):
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    queue = [(tree, 0)]
    nodes.append(None)  # the root
    while queue:
        node, index = queue.pop(0)
        first = len(nodes)
        children = sorted(node.items())
        nodes.extend([None] * len(children))
        nodes[index] = ("dir", index and nodes[index][1], len(children), first)
        for k, (name, child) in enumerate(children):
            if isinstance(child, dict):
                nodes[first + k] = ("dir", name_offset(name), 0, 0)
                queue.append((child, first + k))
            else:
                raw, packed = files[child]
                blob = struct.pack(">I", len(raw)) + zlib.compress(raw) if packed else raw
                nodes[first + k] = ("file", name_offset(name), len(data), int(packed))
                data += struct.pack(">I", len(blob)) + blob
    tree_bytes = b""
    for kind, offset, a, b in nodes:
        if kind == "dir":
            tree_bytes += struct.pack(">IHII", offset, 2, a, b) + b"\0" * 8
        else:
            tree_bytes += struct.pack(">IHHHI", offset, b, 0, 0, a) + b"\0" * 8
    header = 24
    path.write_bytes(
        b"qres" + struct.pack(">IIIII", 3, header, header + len(tree_bytes), header + len(tree_bytes) + len(data), 0)
        + tree_bytes + data + names
    )  # fmt: skip


def png(seed):
    image = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture
def manifest(tmp_path):
    bundle = tmp_path / "activity.rcc"
    write_rcc(bundle, {"/a/res/x.png": (png(1), False), "/a/res/sub/y.png": (png(2), True), "/a/README": (b"hi", 1)})
    (tmp_path / "z.png").write_bytes(png(3))
    entries = [
        ("pkg/x.png", f"{bundle}::/a/res/x.png", png(1)),
        ("pkg/y.png", f"{bundle}::/a/res/sub/y.png", png(2)),
        ("other/z.png", str(tmp_path / "z.png"), png(3)),
        ("gone/w.png", str(tmp_path / "missing.png"), png(4)),
    ]
    path = tmp_path / "photos.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for name, where, data in entries:
            w.writerow({"name": name, "package": name.split("/")[0], "path": where, "licence": "CC0-1.0",
                        "copyright": "someone", "origin": "here", "sha1": hashlib.sha1(data).hexdigest(),
                        "width": 60, "height": 40})  # fmt: skip
    return path


def test_qt_resource_bundles_are_read_in_place(tmp_path):
    bundle = tmp_path / "b.rcc"
    write_rcc(bundle, {"/r/one.png": (png(1), False), "/r/deep/two.png": (png(2), True)})
    assert set(rcc_index(str(bundle))) == {"/r/one.png", "/r/deep/two.png"}
    assert read_rcc_member(str(bundle), "/r/one.png") == png(1)
    assert read_rcc_member(str(bundle), "/r/deep/two.png") == png(2)  # zlib-compressed member
    (tmp_path / "not.rcc").write_bytes(b"nope" * 10)
    with pytest.raises(OSError, match="not a Qt resource bundle"):
        rcc_index(str(tmp_path / "not.rcc"))


def test_source_lists_what_is_installed_and_warns_of_the_rest(manifest, caplog):
    with caplog.at_level(logging.WARNING):
        source = PhotoSource(manifest)
    assert source.names == ["other/z.png", "pkg/x.png", "pkg/y.png"]
    assert "3 of 4 installed" in caplog.text and "gone" in caplog.text
    assert source.read("pkg/y.png").shape == (40, 60, 3)


def test_changed_file_is_used_with_one_warning(manifest, tmp_path, caplog):
    (tmp_path / "z.png").write_bytes(png(9))
    source = PhotoSource(manifest)
    with caplog.at_level(logging.WARNING):
        source.read("other/z.png")
        source.read("other/z.png")
    assert caplog.text.count("differs from the manifest") == 1


def test_nothing_installed_is_a_clear_error(manifest, tmp_path):
    rows = read_manifest(manifest)
    path = tmp_path / "none.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows([{**r, "path": str(tmp_path / "nowhere.png")} for r in rows])
    with pytest.raises(InputError, match="python -m data.photos --install"):
        PhotoSource(path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a photo manifest"):
        PhotoSource(tmp_path / "bad.csv")


def test_install_asks_apt_for_the_missing_packages_only(manifest, monkeypatch, capsys):
    monkeypatch.setattr(photos.shutil, "which", lambda _: "/usr/bin/apt-get")
    photos.install(manifest, dry_run=True)
    command = capsys.readouterr().out.split()
    assert command[-1] == "gone" and "pkg" not in command and "install" in command


def test_the_manifest_has_150_distinct_photos_each_with_licence_and_origin():
    rows = read_manifest(MANIFEST)
    assert len(rows) >= 150
    assert len({r["name"] for r in rows}) == len(rows) and len({r["sha1"] for r in rows}) == len(rows)
    for r in rows:
        assert r["licence"] and (r["copyright"] or r["origin"]) and r["package"], r["name"]
    val = split_names([r["name"] for r in rows], "val", 0.2)
    assert 25 <= len(val) <= 60  # the demo's val photos


@pytest.mark.skipif(not photos.present(read_manifest(MANIFEST)[-1]["path"]), reason="photo packages not installed")
def test_the_installed_photos_match_the_manifest():
    """After the README's setup (``python -m data.photos --install``; .ci/run does it) every photo reads back
    bit-identical to the version the manifest was made from."""
    source = open_source("photos")
    rows = read_manifest(MANIFEST)
    assert len(source) == len(rows)
    for r in rows:
        data = source.read_bytes(r["name"])
        assert hashlib.sha1(data).hexdigest() == r["sha1"], r["name"]
    assert source.read(rows[-1]["name"]).shape[:2] == (int(rows[-1]["height"]), int(rows[-1]["width"]))
