"""The ``photos`` image source: natural photographs that install from the package registries, read in place.

Every photo is a row of ``photos.csv`` (written by ``python -m data.photos_manifest`` from the installed packages):
its name, the package that ships it, where that package installs it, its licence, copyright holder and origin as
the package's copyright file (or the photo's own metadata) states them, and its SHA-1. The packages are scikit-image
(a PyPI dependency) and Debian packages (``python -m data.photos --install`` installs those that are missing, with
apt-get): OpenCV's sample data, GCompris' activity photos, the MATE and Lomiri (Ubuntu Touch) wallpapers and KDE
Palapeli's puzzle photos. GCompris keeps its images in Qt resource bundles (``.rcc``), read here like a zip archive.

``data.images.PhotoSource`` (``open_source("photos")``) lists the manifest's photos that are present; a file whose
bytes differ from the manifest (another package version) is used, with one warning: its numbers are then not
comparable.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from functools import lru_cache
from pathlib import Path

from helper import InputError, first_line

logger = logging.getLogger(__name__)

MANIFEST = Path(__file__).with_name("photos.csv")
FIELDS = ("name", "package", "path", "licence", "copyright", "origin", "sha1", "width", "height")
PYPI_PACKAGES = {"scikit-image": "skimage.data"}  # path prefix "skimage.data:" = the installed package's data dir
MEMBER = "::"  # "bundle.rcc::/member/path": a file inside a Qt resource bundle


def read_manifest(path: str | os.PathLike = MANIFEST) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"cannot read the photo manifest {path}: {first_line(e)}") from None
    if not rows or set(FIELDS) - set(rows[0]):
        raise InputError(f"{path} is not a photo manifest (columns {', '.join(FIELDS)})")
    return rows


# ----------------------------------------------------------------------------- Qt resource bundles


@lru_cache(maxsize=None)
def rcc_index(path: str) -> dict[str, tuple[int, int, int]]:
    """Files of a Qt resource bundle (rcc format 1-3): member path -> (data offset, length, flags)."""
    data = Path(path).read_bytes()
    if data[:4] != b"qres":
        raise OSError(f"{path} is not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    entry = 14 if version == 1 else 22  # format 2+ adds a last-modified time per node

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    index: dict[str, tuple[int, int, int]] = {}
    stack = [(0, "")]
    while stack:
        node, prefix = stack.pop()
        at = tree + node * entry
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path_here = prefix + "/" + name(name_offset) if node else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack.extend((child, path_here) for child in range(first, first + count))
        else:
            (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
            (length,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
            index[path_here] = (payload + offset + 4, length, flags)
    return index


def read_rcc_member(bundle: str, member: str) -> bytes:
    offset, length, flags = rcc_index(bundle)[member]
    with open(bundle, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    if flags & 4:
        raise OSError(f"{member} in {bundle} is zstd-compressed, which this reader does not decode")
    return zlib.decompress(raw[4:]) if flags & 1 else raw  # zlib members start with their uncompressed size


# ----------------------------------------------------------------------------- locating and reading


@lru_cache(maxsize=None)
def _pypi_dir(module: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def resolve(path: str) -> str:
    """A manifest path with a PyPI package prefix ("skimage.data:astronaut.png") made absolute."""
    if ":" in path.split(MEMBER)[0]:
        module, rest = path.split(":", 1)
        folder = _pypi_dir(module)
        return os.path.join(folder, rest) if folder else ""
    return path


def present(path: str) -> bool:
    path = resolve(path)
    if MEMBER in path:
        bundle, member = path.split(MEMBER, 1)
        try:
            return os.path.isfile(bundle) and member in rcc_index(bundle)
        except (OSError, struct.error):
            return False
    return bool(path) and os.path.isfile(path)


def read_photo(path: str) -> bytes:
    path = resolve(path)
    if MEMBER in path:
        bundle, member = path.split(MEMBER, 1)
        try:
            return read_rcc_member(bundle, member)
        except (KeyError, struct.error, zlib.error) as e:
            raise OSError(f"unreadable member of {bundle} ({first_line(e)})") from None
    return Path(path).read_bytes()


# ----------------------------------------------------------------------------- installing


def install(manifest: str | os.PathLike = MANIFEST, dry_run: bool = False) -> int:
    """apt-get install the manifest's Debian packages that are missing and known to this machine's package lists."""
    rows = read_manifest(manifest)
    missing = sorted({r["package"] for r in rows if not present(r["path"])} - set(PYPI_PACKAGES))
    if not missing:
        print(f"photos: all {len(rows)} photos of the manifest are installed")
        return 0
    if shutil.which("apt-get") is None:
        raise InputError(f"photos: apt-get not found; install these Debian/Ubuntu packages: {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    command = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if dry_run:
        print(" ".join(command + missing))
        return 0

    def known(package: str) -> bool:
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, env=env).stdout
        return "Candidate:" in out and "Candidate: (none)" not in out

    if not all(known(p) for p in missing):  # a fresh machine's package lists are empty until an update
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env)
    available = [p for p in missing if known(p)]
    for p in sorted(set(missing) - set(available)):
        logger.warning("photos: package %s is not in this machine's package lists: its photos are left out", p)
    if available:
        result = subprocess.run(command + available, env=env, stdout=subprocess.DEVNULL)
        if result.returncode:
            raise InputError(f"photos: '{' '.join(command + available)}' failed (exit {result.returncode})")
    have = sum(present(r["path"]) for r in rows)
    print(f"photos: {have} of {len(rows)} photos installed")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="apt-get install the missing photo packages")
    parser.add_argument("--dry-run", action="store_true", help="print the apt-get command instead")
    parser.add_argument("--list", action="store_true", help="list the installed photos with their licences")
    args = parser.parse_args(argv)
    try:
        if args.install or args.dry_run:
            sys.exit(install(dry_run=args.dry_run))
        rows = [r for r in read_manifest() if present(r["path"])]
        for row in rows:
            print(f"{row['name']}\t{row['licence']}\t{row['copyright']}\t{row['origin']}")
        print(f"{len(rows)} of the manifest's photos installed", file=sys.stderr)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
