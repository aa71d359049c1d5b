"""Resolving, downloading, caching and safely loading weights, without the official files or internet."""

import os
import urllib.error

import pytest
import torch
from generated_weights import generated_state_dict

from models import weights
from models.superglue import SuperGlue
from models.superpoint import SuperPoint
from models.weights import WeightsError, git_blob_sha1


def sp_state():
    return generated_state_dict({k: tuple(v.shape) for k, v in SuperPoint({"weights": None}).state_dict().items()})


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_request_is_one_line_naming_url_and_path(torch_home, monkeypatch):
    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(WeightsError) as e:
        SuperGlue({"weights": "outdoor"})
    msg = str(e.value)
    assert "\n" not in msg
    url = "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/master/models/weights/superglue_outdoor.pth"
    assert url in msg
    assert str(torch_home / "hub" / "checkpoints" / "superglue_outdoor.pth") in msg
    assert not (torch_home / "hub" / "checkpoints").exists() or not os.listdir(torch_home / "hub" / "checkpoints")


def test_locally_made_file_in_the_cache_is_found_and_loaded(torch_home, monkeypatch):
    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)  # must not be needed
    state = sp_state()
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, torch_home / "hub" / "checkpoints" / "superpoint_v1.pth")
    sp = SuperPoint()  # default: the official name
    assert torch.equal(sp.conv3a.weight, state["conv3a.weight"])


def test_explicit_path_wins(tmp_path):
    state = sp_state()
    torch.save(state, tmp_path / "mine.pth")
    assert torch.equal(SuperPoint({"weights": str(tmp_path / "mine.pth")}).convDb.bias, state["convDb.bias"])


def test_download_is_verified_and_atomic(torch_home, tmp_path, monkeypatch):
    src = tmp_path / "served.pth"
    torch.save(sp_state(), src)
    monkeypatch.setattr(weights, "official_url", lambda name: src.as_uri())
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "superpoint_v1", "0" * 40)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.resolve_weights("superpoint_v1")
    assert not list((torch_home / "hub" / "checkpoints").iterdir())  # nothing half-written is left

    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "superpoint_v1", git_blob_sha1(src))
    path = weights.resolve_weights("superpoint_v1")
    assert path == torch_home / "hub" / "checkpoints" / "superpoint_v1.pth"
    assert path.read_bytes() == src.read_bytes()


def test_git_blob_sha1_is_what_git_computes(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    assert git_blob_sha1(tmp_path / "f") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content", ["corrupt", "pickle", "mismatch", "missing"])
def test_bad_weight_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "corrupt":
        path.write_bytes(b"not a checkpoint")
    elif content == "pickle":
        torch.save({"conv1a.weight": Evil()}, path)
    elif content == "mismatch":
        torch.save(generated_state_dict({"conv1a.weight": (3, 3)}), path)
    with pytest.raises(WeightsError) as e:
        SuperPoint({"weights": str(path)})
    assert "\n" not in str(e.value) and str(path) in str(e.value)
