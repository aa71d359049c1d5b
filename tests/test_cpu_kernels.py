"""The tests whose numbers depend on float kernels pass with each kernel set torch can pick on an x86 CPU.

This project's machines differ (Intel AVX-512 with AMX, AMD AVX-512, AMD AVX2 only); ``ATEN_CPU_CAPABILITY`` makes
torch take another set's kernels on this one, so a tie or a tolerance that holds on one CPU only fails here, on
every machine, instead of on the next one."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

NUMERICS = [
    "tests/test_losses.py",  # the evaluation's ground truth against the loss's: ties broken by index in both
    "tests/test_reference_equivalence.py::test_superpoint_matches_official",  # the official models' tolerances
    "tests/test_reference_equivalence.py::test_superglue_matches_official",
]


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_numerics_hold_with_other_cpu_kernels(capability):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NUMERICS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout.splitlines()[-1] and "deselected" not in done.stdout.splitlines()[-1]
