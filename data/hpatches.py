"""HPatches (Balntas et al., CVPR 2017): 116 planar scenes, 6 real photographs each, with published homographies.

The benchmark the field reports homography accuracy on (SuperGlue, LightGlue, glue-factory): every scene's
image 1 against images 2–6; ``v_*`` scenes change viewpoint, ``i_*`` scenes change illumination.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import urllib.error
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from helper import InputError, download, remove_stale_temps, temp_prefix

from .pairs import FilePairs, Pair, read_homography_file

logger = logging.getLogger(__name__)

HPATCHES_URL = "http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz"  # 1.3 GB
HPATCHES_FOLDER = "hpatches-sequences-release"
# High-resolution scenes left out since D2-Net, as LightGlue and glue-factory do: 108 scenes, 540 pairs remain.
LARGE_SCENES = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)


def scenes_in(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if (d / "1.ppm").is_file()) if root.is_dir() else []


def fetch_hpatches(folder: str | os.PathLike, url: str = HPATCHES_URL) -> Path:
    """The HPatches scenes folder: ``folder`` itself if it holds scenes, else ``folder/hpatches-sequences-release``,
    downloaded and extracted there first if missing (the folder appears only complete)."""
    return fetch_dataset(
        folder,
        url,
        HPATCHES_FOLDER,
        lambda p: bool(scenes_in(p)),
        "HPatches (1.3 GB)",
        "HPatches scenes (<scene>/1.ppm)",
    )


def fetch_dataset(
    folder: str | os.PathLike, url: str, name: str, complete: Callable[[Path], bool], what: str, layout: str
) -> Path:
    """A dataset's folder: ``folder`` itself if ``complete(folder)``, else ``folder/name``, downloaded from ``url``
    (a .tar.gz or .zip holding ``name/``) and extracted there first if missing; it appears only complete. Never
    deletes or overwrites the user's files: an archive found in ``folder`` is used and kept, a ``folder/name`` that
    is not complete is an error."""
    folder = Path(folder).expanduser()
    label = what.split(" (")[0]
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{label} folder {folder} is a file: give the folder that holds (or will hold) {name}")
    if complete(folder):
        return folder
    root = folder / name
    if complete(root):
        return root
    if root.exists():  # never overwrite a folder someone made: it may hold their own files
        raise InputError(f"{root} holds no {layout}; move it away to download again")
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / url.rsplit("/", 1)[-1]
    downloaded = not archive.is_file()  # an archive the user put there is theirs: never deleted
    if downloaded:
        logger.info("downloading %s from %s to %s", what, url, archive)
        try:
            download(url, archive)
        except (urllib.error.URLError, OSError) as e:
            raise InputError(
                f"cannot download {label} from {url} ({getattr(e, 'reason', e)}); put {archive.name} "
                f"or its extracted {name} in {folder}"
            ) from None
    remove_stale_temps(folder, name)  # a half-extracted copy a killed run left
    with tempfile.TemporaryDirectory(dir=folder, prefix=temp_prefix(root)) as tmp:
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as z:
                    z.extractall(tmp)  # member names are made relative: nothing lands outside tmp
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(
                f"{archive} is not a readable {label} archive ({e}); delete it to download again"
            ) from None
        extracted = Path(tmp) / name
        if not complete(extracted):
            raise InputError(f"{archive} holds no {name}/ with {layout}; delete it to download again")
        os.replace(extracted, root)
    if downloaded:
        logger.info("extracted %s; deleting the archive this run downloaded", root)
        archive.unlink()
    else:
        logger.info("extracted %s; your archive %s is kept", root, archive)
    return root


class HPatchesPairs(FilePairs):
    """Image 1 against images 2–6 of every scene, resized to a shorter side of 480 as glue-factory does (or, with
    ``resize``, like ``match_pairs.py --resize``), ground truth scaled to match."""

    def __init__(
        self,
        root: str | os.PathLike,
        resize: Sequence[int] | None = None,
        subset: str = "all",
        include_large: bool = False,
        short_side: int = 480,
    ):
        root = Path(root)
        if subset not in ("all", "v", "i"):
            raise InputError(f"HPatches subset must be 'all', 'v' (viewpoint) or 'i' (illumination), got {subset!r}")
        scenes = [
            s
            for s in scenes_in(root)
            if (include_large or s not in LARGE_SCENES) and (subset == "all" or s.startswith(f"{subset}_"))
        ]
        if not scenes:
            raise InputError(f"no HPatches scenes (<scene>/1.ppm) of subset {subset!r} in {root}")
        pairs = [
            Pair(f"{s}/1.ppm", f"{s}/{k}.ppm", H=read_homography_file(root / s / f"H_1_{k}"), meta={"scene": s})
            for s in scenes
            for k in range(2, 7)
        ]
        super().__init__(pairs, root, resize or [-1], short_side=None if resize else short_side)
