"""The roles a method declares (``Method.roles``): how the harness and its report treat it.

Nothing outside a method's own file names a method: the config, the report and the figures select methods by
role (and by ``family``: the paper figures a method is drawn in, which each figure names; the contract
tests check that every declared family has a figure). This module is plain Python, so the suite loader
and the report read roles without importing torch.
"""

from __future__ import annotations

#: role -> what it means to the harness (the run record has one boolean column ``role_<name>`` per role)
ROLES: dict[str, str] = {
    "reference": "the unmodified backbone: every speed-up, FLOPs reduction and delta is measured against it",
    "control": "content-blind token selection (a fixed pattern, a random subset): the ablation's baselines",
    "learned": "chooses tokens from the image (a learned or attention-based scorer, clustering): compared with "
    "the controls in the learned-vs-control ablation",
    "merging": "combines tokens into fewer tokens (pooling, clustering, merging) instead of dropping them",
    "weight_budget": "its budget is a weight density, not a token count: run at keep ratio 1.0 only",
}


def role_column(role: str) -> str:
    """The run record's column saying whether a run's method has ``role``."""
    return f"role_{role}"


def check_roles(owner: str, roles: frozenset[str] | set[str] | tuple[str, ...]) -> None:
    """Refuse an undeclared role (a typo would silently drop a method from every figure)."""
    from bench.registry import did_you_mean

    for role in roles:
        if role not in ROLES:
            raise ValueError(
                f"{owner}: unknown role {role!r}{did_you_mean(str(role), list(ROLES))} (roles: {', '.join(ROLES)})"
            )
