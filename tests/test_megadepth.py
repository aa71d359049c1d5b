"""MegaDepth-1500 in glue-factory's layout, on a small fake made here from rendered scenes (no registry ships it)."""

import zipfile

import cv2
import numpy as np
import pytest

from data.megadepth import MEGADEPTH_FOLDER, MegaDepthPairs, fetch_megadepth
from helper import InputError


def fake_megadepth(folder, num_pairs=2):
    """``folder/megadepth1500`` with rendered scene pairs: views.txt (COLMAP pinhole, world = camera 0 of each
    pair), pairs.txt and images/."""
    from data.images import open_source
    from data.scenes import ScenePairs

    scenes = ScenePairs(open_source("sample"), open_source("sample").names, num_pairs)
    root = folder / MEGADEPTH_FOLDER
    (root / "images").mkdir(parents=True)
    views, pairs = [], []
    for pair in scenes:
        for i, (name, T) in enumerate(((pair.name0, np.eye(4)), (pair.name1, pair.T_0to1))):
            cv2.imwrite(str(root / "images" / name), cv2.cvtColor(scenes.image(pair, i)[1], cv2.COLOR_RGB2BGR))
            K = pair.K0
            fields = [
                *T[:3, :3].ravel(),
                *T[:3, 3],
                "PINHOLE",
                640,
                480,
                K[0, 0],
                K[1, 1],
                K[0, 2] + 0.5,
                K[1, 2] + 0.5,
            ]
            views.append(" ".join([name, *map(str, fields)]))
        pairs.append(f"{pair.name0} {pair.name1}")
    (root / "views.txt").write_text("\n".join(views) + "\n")
    (root / "pairs.txt").write_text("\n".join(pairs) + "\n")
    return root, scenes


def test_megadepth_pairs_carry_the_views_poses_and_cameras(tmp_path):
    root, scenes = fake_megadepth(tmp_path)
    pairs = MegaDepthPairs(fetch_megadepth(tmp_path), long_side=640)
    assert len(pairs) == 2
    for got, want in zip(pairs, scenes):
        np.testing.assert_allclose(got.T_0to1, want.T_0to1, atol=1e-9)
        np.testing.assert_allclose(pairs.ground_truth(got).K0, want.K0, atol=1e-9)
    small = MegaDepthPairs(root, long_side=320)  # resized as glue-factory does, intrinsics scaled
    assert small.image(small[0], 0)[1].shape == (240, 320, 3)
    assert small.ground_truth(small[0]).K0[0, 0] == pytest.approx(scenes[0].K0[0, 0] / 2)


def test_megadepth_is_extracted_from_a_users_archive_and_the_archive_is_kept(tmp_path):
    fake_megadepth(tmp_path / "src")
    archive = tmp_path / "data" / "megadepth1500.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "src").rglob("*"):
            z.write(f, f.relative_to(tmp_path / "src"))
    root = fetch_megadepth(tmp_path / "data", url="http://127.0.0.1:9/megadepth1500.zip")
    assert root == tmp_path / "data" / MEGADEPTH_FOLDER and archive.is_file()
    assert len(MegaDepthPairs(root)) == 2


def test_megadepth_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="cannot download MegaDepth-1500"):
        fetch_megadepth(tmp_path / "empty", url="http://127.0.0.1:9/megadepth1500.zip")
    (tmp_path / "mine" / MEGADEPTH_FOLDER).mkdir(parents=True)
    with pytest.raises(InputError, match="move it away"):
        fetch_megadepth(tmp_path / "mine")
    root, _ = fake_megadepth(tmp_path / "bad")
    (root / "views.txt").write_text("a.png 1 0 0 0 1 0 0 0 1 0 0 0 OPENCV 640 480 500 500 320 240 0.1 0 0 0\n")
    with pytest.raises(InputError, match="camera OPENCV"):
        MegaDepthPairs(root)
    (root / "views.txt").write_text("a.png 1 0 0 0 1 0 0 0 1 0 0 0 PINHOLE 640 480 500 500 320 240\n")
    with pytest.raises(InputError, match="pairs.txt:1: expected two names of views.txt"):
        MegaDepthPairs(root)


def test_evaluate_prints_glue_factorys_megadepth_table(tmp_path, capsys):
    import evaluate

    fake_megadepth(tmp_path, num_pairs=1)
    evaluate.main(["--matcher", "aliked+lightglue", "--megadepth", str(tmp_path), "--resize", "640"])
    out = capsys.readouterr().out
    assert "MegaDepth-1500, glue-factory's protocol (1 pairs, longer side 640" in out
    assert "AUC 5deg/10deg/20deg" in out and "PoseLib LO-RANSAC" in out and "66.4/79.0/87.5" in out
    with pytest.raises(InputError, match="one --resize number"):
        evaluate.main(["--megadepth", str(tmp_path), "--resize", "640", "480"])
