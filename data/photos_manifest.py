"""Write ``photos.csv`` from the installed packages: the chosen photos, each with its licence and origin.

Run after ``python -m data.photos --install`` when the selection below or a package changes:
``python -m data.photos_manifest`` (``--sheet FILE.png`` also draws a contact sheet to check the choice by eye).

The selection keeps real, textured photographs (no renderings, drawings, paintings, cut-outs on white or charts)
of at least 480 px on the shorter side (300 px for GCompris' activity photos, which it ships about 1024 px wide).
A photo that is a near copy of an earlier one (same scene at another size or crop: 32×32 grey thumbnails
correlating above 0.9) is left out. Licences come from the photo's own credits where the package ships them (GCompris'
per-activity READMEs, Palapeli's puzzle metadata), else from the package's machine-readable copyright file (the
last ``Files:`` stanza that matches, as the format says).
"""

from __future__ import annotations

import argparse
import configparser
import csv
import fnmatch
import hashlib
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from helper import decode_image

from .images import SAMPLE_PHOTOS
from .photos import FIELDS, MANIFEST, MEMBER, rcc_index, read_photo, read_rcc_member

OPENCV = "/usr/share/doc/opencv-doc/examples/data"
GCOMPRIS = "/usr/share/gcompris-qt/rcc"
OPENCV_PHOTOS = (  # natural photographs of OpenCV's sample data (graf1/graf3 stay out: the graffiti benchmark)
    "aero1.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg box_in_scene.png building.jpg butterfly.jpg "
    "chicky_512.png ela_original.jpg fruits.jpg home.jpg left.jpg left01.jpg leuvenA.jpg messi5.jpg orange.jpg "
    "rubberwhale1.png smarties.png squirrel_cls.jpg stuff.jpg"
).split()
LOMIRI_PHOTOS = (
    "Picture_1A_by_freespace.jpg Wine_by_Jakkub_Mede.jpg seeding_by_Clements_Engelhardt.jpg "
    "aitzgorri_by_Aitzol_Berasategi.jpg Dragonfly_by_Bolly.jpg friends_by_Aitzol_Berasategi.jpg "
    "sunset_by_Aitzol_Berasategi.jpg free_by_Peter_Nerlich.jpg picosdeeuropa_by_Aitzol_Berasategi.jpg "
    "Picture_0B_by_freespace.jpg life_by_Aitzol_Berasategi.jpg Bridge_by_Sander_Klootwijk.jpg"
).split()
PALAPELI_PHOTOS = "castle-maintenon cincinnati-bridge citrus-fruits european-honey-bee panther-chameleon-female".split()
LEFT_OUT = {  # seen on the contact sheet: a stereo twin of motorcycle_left, an instrument cut out on white
    "skimage/motorcycle_right.png",
    "gcompris/explore_world_music/music/middleeast.webp",
}
GCOMPRIS_PHOTOS = {  # bundle -> member globs (the activity's photographs; its drawings and paintings stay out)
    "explore_monuments": ["*/resource/*/*.webp"],
    "explore_world_animals": ["*/resource/animals/*.webp"],
    "explore_farm_animals": ["*/resource/animals/*.webp"],
    "explore_world_music": ["*/resource/music/*.webp"],
    "erase": ["*/resource/*.webp"],
    "clickgame": ["*/resource/sea*.webp"],
    "categorization": ["*/victoriaMemorial.webp", "*/windmill6.webp"],
}


# ----------------------------------------------------------------------------- licences


def dep5_stanzas(package: str) -> list[dict[str, str]]:
    """The paragraphs of a package's machine-readable copyright file (continuation lines joined)."""
    text = Path(f"/usr/share/doc/{package}/copyright").read_text(encoding="utf-8", errors="replace")
    stanzas, current, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            current[key] = value.strip()
    return [s for s in stanzas if "Files" in s]


def dep5_licence(stanzas: list[dict[str, str]], path: str) -> dict[str, str]:
    """Licence, copyright and comment of the last stanza whose ``Files`` pattern matches the end of ``path``.
    Image extensions are compared loosely: packages ship PNG or JPEG sources converted to WebP."""
    stem = re.sub(r"\.(jpe?g|png|webp|svg)$", "", path, flags=re.I)
    found = {}
    for s in stanzas:
        for pattern in s["Files"].split():
            p = re.sub(r"\.(jpe?g|png|webp|svg)$", "", pattern, flags=re.I)
            if pattern == "*" or fnmatch.fnmatchcase(stem, "*/" + p) or fnmatch.fnmatchcase(stem, p):
                found = s
    return {
        "licence": found.get("License", "").split("\n")[0],
        "copyright": found.get("Copyright", "").replace("\n", "; "),
        "origin": found.get("Comment", "").split("\n")[0],
    }


def gcompris_credits(bundle: str) -> dict[str, dict[str, str]]:
    """Per-file credits of a GCompris activity: the README beside its resources (blocks of Copyright, License,
    Source and Files lines) -> {member path: licence, copyright, origin}."""
    credits = {}
    for readme in (m for m in rcc_index(bundle) if m.endswith("/README")):
        folder = readme.rsplit("/", 1)[0]
        for block in read_rcc_member(bundle, readme).decode("utf-8", "replace").split("\n\n"):
            fields, key = {}, None
            for line in block.splitlines():
                name, sep, value = line.partition(":")
                if sep and name.strip() in ("Copyright", "License", "Source", "Comments", "Files"):
                    key = name.strip()
                    fields[key] = value.strip()
                elif key == "Files" and line.strip():
                    fields["Files"] += " " + line.strip()
            for f in fields.get("Files", "").split():
                credits[f"{folder}/{f}"] = {
                    "licence": fields.get("License", ""),
                    "copyright": fields.get("Copyright", ""),
                    "origin": fields.get("Source", ""),
                }
    return credits


def debian_rows() -> list[dict[str, str]]:
    rows = []
    opencv = dep5_stanzas("opencv-doc")
    for f in OPENCV_PHOTOS:
        rows.append({"name": f"opencv/{f}", "package": "opencv-doc", "path": f"{OPENCV}/{f}",
                     **dep5_licence(opencv, f"samples/data/{f}")})  # fmt: skip
    lomiri = dep5_stanzas("lomiri-wallpapers-16.04")
    for f in LOMIRI_PHOTOS:
        rows.append({"name": f"lomiri/{f}", "package": "lomiri-wallpapers-16.04", "path": f"/usr/share/backgrounds/{f}",
                     **dep5_licence(lomiri, f"16.04/{f}")})  # fmt: skip
    mate = dep5_stanzas("mate-backgrounds")
    for f in sorted(Path("/usr/share/backgrounds/mate/nature").glob("*.jpg")):
        rows.append({"name": f"mate/{f.name}", "package": "mate-backgrounds", "path": str(f),
                     **dep5_licence(mate, f"nature/{f.name}")})  # fmt: skip
    for stem in PALAPELI_PHOTOS:
        desktop = configparser.ConfigParser(interpolation=None, strict=False)
        desktop.read(f"/usr/share/palapeli/collection/{stem}.desktop", encoding="utf-8")
        info = desktop["Desktop Entry"] if desktop.has_section("Desktop Entry") else {}
        rows.append({
            "name": f"palapeli/{stem}.jpg", "package": "palapeli-data",
            "path": f"/usr/share/palapeli/collection/{stem}.jpg",
            "licence": info.get("X-KDE-PluginInfo-License", ""), "copyright": info.get("X-KDE-PluginInfo-Author", ""),
            "origin": info.get("X-KDE-PluginInfo-Website", ""),
        })  # fmt: skip
    gcompris = dep5_stanzas("gcompris-qt-data")
    for bundle, globs in GCOMPRIS_PHOTOS.items():
        path = f"{GCOMPRIS}/{bundle}.rcc"
        credits = gcompris_credits(path)
        for member in sorted(rcc_index(path)):
            if any(fnmatch.fnmatchcase(member, g) for g in globs):
                short = member.split("/resource/", 1)[1]
                credit = credits.get(member) or dep5_licence(gcompris, member.split("/gcompris/", 1)[1])
                rows.append({"name": f"gcompris/{bundle}/{short}", "package": "gcompris-qt-data",
                             "path": f"{path}{MEMBER}{member}", **credit})  # fmt: skip
    return rows


def pypi_rows() -> list[dict[str, str]]:
    licences = {  # scikit-image's data/README.txt, as FACTS.md records it
        "astronaut.png": "public-domain (NASA)",
        "camera.png": "CC0",
        "chelsea.png": "CC0",
        "coffee.png": "CC0",
        "rocket.jpg": "public-domain (SpaceX)",
        "brick.png": "CC0",
        "grass.png": "CC0",
        "gravel.png": "CC0",
        "motorcycle_left.png": "Middlebury stereo data set (research use)",
        "motorcycle_right.png": "Middlebury stereo data set (research use)",
    }
    return [
        {"name": f"skimage/{f}", "package": "scikit-image", "path": f"skimage.data:{f}",
         "licence": licences.get(f, "BSD-3-Clause (scikit-image)"), "copyright": "scikit-image data",
         "origin": "scikit-image skimage/data"}
        for f in SAMPLE_PHOTOS
    ]  # fmt: skip


# ----------------------------------------------------------------------------- selection


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


def build(min_side: int = 480, min_side_gcompris: int = 300) -> tuple[list[dict[str, str]], list[str]]:
    kept, thumbs, dropped = [], [], []
    for row in pypi_rows() + debian_rows():
        if row["name"] in LEFT_OUT:
            continue
        data = read_photo(row["path"])
        image = decode_image(data, row["name"])
        h, w = image.shape[:2]
        least = min_side_gcompris if row["package"] == "gcompris-qt-data" else min_side
        if min(h, w) < least and not row["name"].startswith(("skimage/", "opencv/")):
            dropped.append(f"{row['name']}: {w}x{h} is smaller than {least} px")
            continue
        t = thumbnail(image)
        copies = [k for k, u in enumerate(thumbs) if float(t @ u) / t.size > 0.9]
        if copies:
            dropped.append(f"{row['name']}: a near copy of {kept[copies[0]]['name']}")
            continue
        thumbs.append(t)
        kept.append({**row, "sha1": hashlib.sha1(data).hexdigest(), "width": str(w), "height": str(h)})
    return kept, dropped


def contact_sheet(rows: list[dict[str, str]], out: str, columns: int = 8, cell: int = 200) -> None:
    tiles = []
    for k, row in enumerate(rows):
        image = cv2.cvtColor(decode_image(read_photo(row["path"]), row["name"]), cv2.COLOR_RGB2BGR)
        s = cell / max(image.shape[:2])
        small = cv2.resize(image, (int(image.shape[1] * s), int(image.shape[0] * s)), interpolation=cv2.INTER_AREA)
        tile = np.zeros((cell + 14, cell, 3), np.uint8)
        tile[: small.shape[0], : small.shape[1]] = small
        cv2.putText(tile, f"{k} {row['name'][-28:]}", (1, cell + 11), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255))
        tiles.append(tile)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    cv2.imwrite(out, np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(MANIFEST))
    parser.add_argument("--sheet", help="also write a contact sheet of the chosen photos (PNG)")
    args = parser.parse_args(argv)
    rows, dropped = build()
    for line in dropped:
        print("left out:", line, file=sys.stderr)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    by_package = {}
    for r in rows:
        by_package[r["package"]] = by_package.get(r["package"], 0) + 1
    print(f"{len(rows)} photos -> {args.out}: " + ", ".join(f"{p} {n}" for p, n in sorted(by_package.items())))
    if args.sheet:
        contact_sheet(rows, args.sheet)


if __name__ == "__main__":
    main()
