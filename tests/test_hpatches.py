"""HPatches without internet: a small archive laid out like the real one, served from a file:// URL."""

import json
import subprocess
import sys
import tarfile

import pytest
from conftest import ROOT
from fake_hpatches import make_release

import data.hpatches as hp
from helper import InputError
from models.matching import build_matcher
from pipeline.evaluation import evaluate


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    src = tmp_path_factory.mktemp("served")
    release = make_release(src)
    path = src / "hpatches-sequences-release.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(release, arcname=hp.HPATCHES_FOLDER)
    return path


def test_download_extract_and_pairs(archive, tmp_path, monkeypatch):
    root = hp.fetch_hpatches(tmp_path / "data", archive.as_uri())
    assert root == tmp_path / "data" / hp.HPATCHES_FOLDER and hp.scenes_in(root) == ["i_fake", "v_fake", "v_talent"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [hp.HPATCHES_FOLDER]  # archive, temp dir gone

    def no_download(*args):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(hp, "download", no_download)
    assert hp.fetch_hpatches(tmp_path / "data") == root == hp.fetch_hpatches(root)

    pairs = hp.HPatchesPairs(root)
    assert len(pairs) == 10 and {p.meta["scene"] for p in pairs} == {"v_fake", "i_fake"}
    assert [p.name1 for p in pairs][:5] == [f"i_fake/{k}.ppm" for k in range(2, 7)]
    assert len(hp.HPatchesPairs(root, subset="v")) == 5
    assert len(hp.HPatchesPairs(root, include_large=True)) == 15
    name, image = pairs.image(pairs[0], 1)
    assert image.shape == (480, 640, 3)  # longer side 640, ground truth scaled to the resized images

    summary = evaluate(build_matcher("sift+nn"), hp.HPatchesPairs(root, subset="v"), progress=False)["summary"]
    assert summary["failures"] == 0 and summary["precision"] > 0.9 and summary["auc@3px"] > 0.7


def test_an_archive_the_user_put_there_is_kept_and_a_killed_extraction_cleaned(archive, tmp_path):
    import shutil
    import socket

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(archive, folder / archive.name)  # as the download error message tells users to
    host = socket.gethostname().replace(".", "_")
    stale = folder / f".{hp.HPATCHES_FOLDER}.{host}-{2**22 + 17}.abc"  # a dead process's half extraction
    (stale / "v_half").mkdir(parents=True)
    root = hp.fetch_hpatches(folder, "file:///nowhere/" + archive.name)
    assert hp.scenes_in(root) and (folder / archive.name).read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted([archive.name, hp.HPATCHES_FOLDER])


def test_bad_archives_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="cannot download HPatches"):
        hp.fetch_hpatches(tmp_path / "a", (tmp_path / "missing.tar.gz").as_uri())
    assert not (tmp_path / "a" / hp.HPATCHES_FOLDER).exists()

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "hpatches-sequences-release.tar.gz").write_bytes(b"truncated download")
    with pytest.raises(InputError, match="delete it to download again"):
        hp.fetch_hpatches(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["hpatches-sequences-release.tar.gz"]

    with pytest.raises(InputError, match="no HPatches scenes"):
        hp.HPatchesPairs(tmp_path / "b")
    mine = tmp_path / "d" / hp.HPATCHES_FOLDER / "notes.txt"  # a folder of that name that is not HPatches
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(InputError, match="move it away"):
        hp.fetch_hpatches(tmp_path / "d", (tmp_path / "missing.tar.gz").as_uri())
    assert mine.read_text() == "mine"
    (tmp_path / "c" / "v_x").mkdir(parents=True)
    (tmp_path / "c" / "v_x" / "1.ppm").write_bytes(b"")
    with pytest.raises(InputError, match="H_1_2"):
        hp.HPatchesPairs(tmp_path / "c")
    with pytest.raises(InputError, match="subset"):
        hp.HPatchesPairs(tmp_path / "c", subset="x")


def test_evaluate_command_line_on_hpatches(archive, tmp_path):
    hp.fetch_hpatches(tmp_path, archive.as_uri())
    out = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--matcher",
            "sift+nn",
            "--hpatches",
            str(tmp_path),
            "--hpatches_subset",
            "i",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "num_pairs            5" in out.stdout and (tmp_path / "out" / "pairs.csv").is_file()
    # glue-factory's protocol: DLT, then each robust estimator at 3 px and at its best swept threshold
    table = out.stdout.split("glue-factory's protocol", 1)[1].splitlines()[2:]
    assert [line.split("  ")[0] for line in table] == [
        "DLT (confidence-weighted)",
        "OpenCV RANSAC",
        "OpenCV RANSAC",
        "PoseLib LO-RANSAC",
        "PoseLib LO-RANSAC",
    ]
    assert "3 px fixed" in table[1] and "best of sweep" in table[2] and "34.2/57.9/69.9" in table[2]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())["protocol"]
    assert {r["threshold"] for r in saved if r["setting"] == "best of sweep"} <= {0.5, 1.0, 1.5, 2.0, 2.5, 3.0}
