"""What the protocols share: the PI measure's name, the bootstrap settings, a profile with
another seed, and the bootstrap's timing file."""
from __future__ import annotations

import time

from rationale_kit.core.config import Profile


PI = "token_position_independent"


def bootstrap(evaluation):
    """The bootstrap settings of a profile's ``evaluation`` section."""
    from rationale_kit.metrics.evaluation import Bootstrap

    return Bootstrap(evaluation.bootstrap_resamples, evaluation.seed, evaluation.level, evaluation.interval_method,
                     evaluation.min_notes, evaluation.stability_seeds, evaluation.verdict_resamples,
                     evaluation.seed_interval_method)


def with_seed(profile: Profile, seed: int) -> Profile:
    import dataclasses

    return dataclasses.replace(profile, common=dataclasses.replace(profile.common, seed=seed))


def save_bootstrap_timing(ctx) -> dict:
    """Write the bootstrap's seconds and its share of the notebook's time so far
    (``bootstrap_timing.json`` in the notebook's artifact folder)."""
    from rationale_kit.metrics.evaluation import save_timing

    return save_timing(ctx.out_dir, time.time() - ctx.started)
