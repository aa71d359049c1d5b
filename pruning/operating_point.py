"""Operating points: a part run with other settings (fewer keypoints, fewer Sinkhorn iterations), its weights kept.

Not a change of weights but of computation, measured like any compression: ``{method: settings, part: matcher,
set: {sinkhorn_iterations: 10}}`` (SuperGlue), ``{part: detector, set: {max_keypoints: 512}}``. The settings go into
the pipeline's config (the checkpoint rebuilds the part with them), so this is the first step of a variant.
"""

from __future__ import annotations

from typing import Any

from compression.methods import Job, register_method
from compression.state import states
from helper import Check, InputError
from models.matching import Matcher, check_matcher_config, with_settings


def check_settings(spec: dict[str, Any], matcher: Matcher) -> None:
    """The variant's ``set`` against the settings its part takes (unknown keys, wrong types), before any work."""
    section = matcher.config_parts[spec.get("part", "matcher")]
    config = {**matcher.config, section: {**matcher.config.get(section, {}), **spec["set"]}}
    check_matcher_config(matcher.name, config, where=f"variant {spec['name']}: set")


@register_method(
    "settings",
    settings={"set": {}},
    checks={"set": Check(kind=dict, free=True)},
    needs=("set",),
    check=check_settings,
)
def settings_method(job: Job) -> None:
    """Rebuild the pipeline with the part's settings changed (``set``) and the same weights."""
    old = job.matcher
    if any(states(layer) for layer in old.modules()):
        raise InputError("settings must come first in a variant's method (it rebuilds the part)")
    job.matcher = with_settings(old, job.part, job.spec["set"])
