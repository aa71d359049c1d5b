"""The house rules a newcomer relies on: the project is imported as installed, never by editing sys.path."""

import re

from conftest import ROOT

SOURCES = [
    p
    for pattern in ("*.py", "*/*.py", "*/*/*.py", "notebooks/*.ipynb")
    for p in ROOT.glob(pattern)
    if "runs" not in p.relative_to(ROOT).parts
]


def test_no_file_edits_the_import_path():
    edits = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=|site\.addsitedir")
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if edits.search(p.read_text())]
    assert len(SOURCES) > 40 and offenders == []


def test_every_command_line_has_a_console_script():
    text = (ROOT / "pyproject.toml").read_text()
    for script in (
        "match_pairs",
        "evaluate",
        "profiling",
        "finetune",
        "pruning_experiments",
        "quantization_experiments",
        "visualizations",
    ):
        assert f'"{script}:cli"' in text and "def cli() -> None:" in (ROOT / f"{script}.py").read_text()
