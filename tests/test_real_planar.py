"""Real accuracy offline: the Oxford graffiti pair against its published homography, and unseen photos.

The images come from OpenCV's sample data (Debian's opencv-doc, installed by .ci/run)."""

import numpy as np
import pytest

from data.images import opencv_samples_dir
from data.pairs import FilePairs, Pair, make_pairs, read_homography_file
from helper import InputError
from models.matching import build_matcher
from pipeline.evaluation import evaluate


@pytest.fixture(scope="module")
def aliked():
    return build_matcher("aliked+lightglue")


def test_published_graffiti_homography_is_recovered_within_3px(aliked):
    folder = opencv_samples_dir()
    pairs = FilePairs([Pair("graf1.png", "graf3.png", H=read_homography_file(folder / "H1to3p.xml"))], folder, [-1])
    row = evaluate(aliked, pairs, progress=False)["rows"][0]
    assert row["corner_error"] < 3.0
    assert row["precision"] > 0.6 and row["num_correct"] > 200


def test_unseen_photos_are_matched_precisely(aliked):
    summary = evaluate(aliked, make_pairs(source="opencv", num_pairs=4), progress=False)["summary"]
    assert summary["precision"] > 0.9 and summary["failures"] == 0


def test_homography_files_plain_text_and_errors(tmp_path):
    H = np.array([[1.1, 0.02, 5.0], [-0.01, 0.95, -3.0], [1e-5, 2e-5, 1.0]])
    np.savetxt(tmp_path / "H_1_2", H)
    np.testing.assert_array_equal(read_homography_file(tmp_path / "H_1_2"), H)
    (tmp_path / "bad").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(InputError, match="3×3"):
        read_homography_file(tmp_path / "bad")
    with pytest.raises(InputError, match="not found"):
        read_homography_file(tmp_path / "missing.xml")
