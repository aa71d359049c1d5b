"""Operating points: a part run with other settings (fewer keypoints, fewer Sinkhorn iterations), its weights kept.

Not a change of weights but of computation, measured like any compression: ``{method: settings, part: matcher,
set: {sinkhorn_iterations: 10}}`` (SuperGlue), ``{part: detector, set: {max_keypoints: 512}}``. The settings go into
the pipeline's config (the checkpoint rebuilds the part with them), so this is the first step of a variant.
"""

from __future__ import annotations

from compression.methods import Job, register_method
from compression.state import states
from helper import Check, InputError
from models.matching import build_matcher, check_matcher_config


@register_method("settings", settings={"set": {}}, checks={"set": Check(kind=dict, free=True)}, needs=("set",))
def settings_method(job: Job) -> None:
    """Rebuild the pipeline with the part's settings changed (``set``) and the same weights."""
    old = job.matcher
    if any(states(layer) for layer in old.modules()):
        raise InputError("settings must come first in a variant's method (it rebuilds the part)")
    section = old.config_parts[job.part]
    config = {**old.config, section: {**old.config.get(section, {}), **job.spec["set"]}}
    config = check_matcher_config(old.name, config, where="set")
    new = build_matcher(old.name, {**config, "pretrained": False} if "pretrained" in config else config)
    new.load_state_dict(old.state_dict())
    new.config = config
    job.matcher = new.to(next(old.parameters()).device)
