"""Image sources, seeded homographies and pairs files."""

import logging
import zipfile

import cv2
import numpy as np
import pytest

from data.homographies import HomographyConfig, sample_homography, warp_image, warp_points
from data.images import SAMPLE_PHOTOS, FolderSource, ZipSource, open_source, readable_images, split_names
from data.pairs import Pair, SyntheticPairs, parse_pair_line, read_pairs, write_pairs
from helper import InputError


def png(image):
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.png", "a/y.jpg", "a/b/z.bmp"):
        ok = cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        assert ok
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_sample_source_holds_only_shipped_photos():
    src = open_source("sample")
    assert len(src) >= 10 and set(src.names) <= set(SAMPLE_PHOTOS) and src.names == sorted(src.names)
    assert "astronaut.png" in src.names
    assert all(src.read(n).ndim == 3 and src.read(n).dtype == np.uint8 for n in src.names[:3])


def test_folder_source_is_recursive_and_skips_corrupt_images(folder, caplog):
    src = FolderSource(folder)
    assert src.names == ["a/b/z.bmp", "a/broken.png", "a/y.jpg", "x.png"]
    with pytest.raises(InputError, match="a/broken.png"):
        src.read("a/broken.png")
    with caplog.at_level(logging.WARNING):
        got = [name for name, _ in readable_images(src, src.names)]
    assert got == ["a/b/z.bmp", "a/y.jpg", "x.png"]
    assert "skipped 1 unreadable image" in caplog.text


def test_zip_source_reads_in_place(folder, tmp_path):
    archive = tmp_path / "coco_minitrain_25k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "x.png", "images/x.png")
        z.writestr("images/broken.jpg", b"garbage")
        z.writestr("__MACOSX/images/._x.png", b"junk")
    src = open_source(archive)
    assert isinstance(src, ZipSource) and src.names == ["images/broken.jpg", "images/x.png"]
    assert src.read("images/x.png").shape == (40, 50, 3)
    assert [n for n, _ in readable_images(src, src.names)] == ["images/x.png"]


def test_empty_or_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path)
    with pytest.raises(InputError, match="image source not found"):
        open_source(tmp_path / "nope")


def test_split_is_deterministic_and_disjoint():
    names = [f"{i:012d}.jpg" for i in range(500)]
    train, val = split_names(names, "train"), split_names(names, "val")
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(names)
    assert 60 < len(val) < 140  # ~20 %
    assert split_names(list(reversed(names)), "val") == sorted(val, reverse=True)


def test_homography_is_seeded_and_maps_the_patch_onto_the_frame():
    cfg = HomographyConfig()
    H1 = sample_homography(np.random.default_rng([3, 7]), (640, 480), cfg)
    H2 = sample_homography(np.random.default_rng([3, 7]), (640, 480), cfg)
    H3 = sample_homography(np.random.default_rng([3, 8]), (640, 480), cfg)
    assert np.array_equal(H1, H2) and not np.allclose(H1, H3)
    # Without artifacts, the whole warped frame comes from inside the source image.
    frame = np.array([[-0.5, -0.5], [639.5, -0.5], [639.5, 479.5], [-0.5, 479.5]])
    src = warp_points(frame, np.linalg.inv(H1))
    assert np.all(src >= -0.5 - 1e-6) and np.all(src <= [639.5 + 1e-6, 479.5 + 1e-6])


def test_difficulty_zero_gives_the_plain_central_crop():
    H = sample_homography(np.random.default_rng(0), (100, 80), HomographyConfig(difficulty=0, translation=0))
    assert np.allclose(H, np.diag([1 / 0.8, 1 / 0.8, 1]) @ [[1, 0, -10 + 0.1], [0, 1, -8 + 0.1], [0, 0, 1]], atol=1e-9)


def test_warp_and_points_agree_on_pixel_convention():
    yy, xx = np.mgrid[0:120, 0:160]
    image = ((np.sin(xx / 9.0) + np.cos(yy / 7.0)) * 60 + 128).astype(np.float32)
    H = sample_homography(np.random.default_rng(1), (160, 120), HomographyConfig())
    warped = warp_image(image, H, (160, 120))
    pts = np.array([[40.0, 30.0], [80.0, 60.0], [100.0, 70.0]])
    for (x, y), (u, v) in zip(pts, warp_points(pts, H)):
        assert abs(warped[int(round(v)), int(round(u))] - image[int(y), int(x)]) < 12


def test_synthetic_pairs_are_fixed_and_export_in_full_precision(tmp_path):
    src = open_source("sample")
    a = SyntheticPairs(src, src.names[:3], 5, (160, 120), seed=4)
    b = SyntheticPairs(src, src.names[:3], 5, (160, 120), seed=4)
    c = SyntheticPairs(src, src.names[:3], 5, (160, 120), seed=5)
    assert [p.name0 for p in a] == [src.names[i % 3] for i in range(5)]
    assert all(np.array_equal(p.H, q.H) for p, q in zip(a, b))
    assert not np.allclose(a[0].H, c[0].H)
    pairs_file = a.export(tmp_path)
    back = read_pairs(pairs_file)
    assert all(np.array_equal(p.H, q.H) for p, q in zip(a, back))  # bit-exact round trip
    img = cv2.imread(str(tmp_path / back[1].name1))
    assert img.shape == (120, 160, 3)
    assert np.array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), a.image(a[1], 1)[1])


def test_pairs_file_formats_and_errors(tmp_path):
    K, T = "500 0 320 0 500 240 0 0 1", "1 0 0 0.5 0 1 0 0 0 0 1 0 0 0 0 1"
    pose = f"a.jpg b.jpg 0 1 {K} {K} {T}"
    assert parse_pair_line(pose, "f:1").kind == "pose" and parse_pair_line(pose, "f:1").rot1 == 1
    assert parse_pair_line("a.png b.png", "f:1").kind == "none"
    H = parse_pair_line("a b 1 0 5 0 1 0 0 0 1", "f:1")
    assert H.kind == "homography" and H.H[0, 2] == 5
    path = tmp_path / "pairs.txt"
    write_pairs(path, [H, Pair("c", "d")])
    path.write_text(path.read_text() + "x y 1 2 3\n")
    with pytest.raises(InputError, match=r"pairs.txt:3: expected 2, 11 \(homography\) or 38"):
        read_pairs(path)
    path.write_text("a b 1 0 0 0 1 0 0 0 zero\n")
    with pytest.raises(InputError, match=r"pairs.txt:1: malformed"):
        read_pairs(path)
    for line, why in (
        ("a b 0 0 0 0 0 0 0 0 0", "homography is not finite"),
        ("a b 1e200 0 0 0 1e200 0 0 0 1", "nearly so"),  # finite, but points under it overflow or round away
        (f"a b 0 0 {K.replace('500', '0')} {K} {T}", "intrinsics"),
        (f"a b 0 0 {K} {K.replace('500', 'nan')} {T}", "intrinsics"),
        (f"a b 0 0 {K} {K} {T.replace('0.5', 'inf')}", "pose must be finite"),
        (f"a b 0 0 {K} {K} {T.replace('1 0 0 0.5', '2 0 0 0.5')}", "not a rotation"),
        (f"a b 0 5 {K} {K} {T}", "quarter turns"),
    ):
        path.write_text(line + "\n")
        with pytest.raises(InputError, match=f"pairs.txt:1: malformed pair line .*{why}"):
            read_pairs(path)


def test_the_homography_sampler_never_falls_back_to_an_easy_warp():
    # the whole image turned in plane without shrinking: its corners always leave the frame
    impossible = HomographyConfig(patch_ratio=1.0, perspective=0, shear=0, scale=0, rotation=90, difficulty=1.0)
    with pytest.raises(ValueError, match="no patch fits"):
        sample_homography(np.random.default_rng(0), (640, 480), impossible)


def test_the_hard_tier_is_seeded_stronger_in_viewpoint_and_changes_the_light_of_the_second_image():
    from data.pairs import make_pairs

    def corner_shift(pairs):
        c = np.array([[0, 0], [159, 0], [159, 119], [0, 119]], np.float64)
        return np.median([np.abs(warp_points(c, p.H) - c).max() for p in pairs.pairs])

    settings = {"source": "sample", "num_pairs": 12, "size": [160, 120]}
    easy, hard = make_pairs(settings, tier="easy"), make_pairs(settings, tier="hard")
    again = make_pairs(settings, tier="hard")
    assert corner_shift(hard) > 1.5 * corner_shift(easy)
    scales = [abs(np.linalg.det(p.H[:2, :2] / p.H[2, 2])) ** 0.5 for p in hard.pairs]
    assert max(scales) / min(scales) > 2  # zooms in and out
    for p, q in zip(hard.pairs, again.pairs):  # the same on every run
        assert np.array_equal(p.H, q.H) and np.array_equal(hard.image(p, 1)[1], again.image(q, 1)[1])
    p = hard.pairs[0]
    assert np.array_equal(hard.image(p, 0)[1], easy.image(easy.pairs[0], 0)[1])  # the photo as it is
    plain = warp_image(hard.image(p, 0)[1], p.H, (160, 120))
    changed = hard.image(p, 1)[1]
    assert np.abs(changed.astype(float) - plain).mean() > 5  # other light and camera on the second image only
    assert easy.ident != hard.ident and hard.image(p, 1)[0] != easy.image(easy.pairs[0], 1)[0]  # caches kept apart
    with pytest.raises(InputError, match="unknown tier 'medium'"):
        make_pairs(settings, tier="medium")
