"""The report's look: seaborn's "whitegrid" style and "colorblind" palette, as values.

seaborn's own import costs about 0.9 s (it imports scipy.stats for estimators the report never draws), a third of
a cold `bench report` on 10,000 runs; the report uses nothing of it but these values. A test checks that they
equal seaborn's (``tests/test_layers.py``), so an upgrade that changes seaborn's look shows up there.

``method_styles`` gives each method of a suite its look (colour, marker, line style) once, from the runs table:
every report and paper figure draws a method with the look it gets here, whichever methods a figure shows.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import pandas as pd

from bench.roles import role_column

#: seaborn.axes_style("whitegrid") without its colormap (registered by seaborn at import)
WHITEGRID: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.labelcolor": ".15",
    "xtick.direction": "out",
    "ytick.direction": "out",
    "xtick.color": ".15",
    "ytick.color": ".15",
    "axes.axisbelow": True,
    "grid.linestyle": "-",
    "text.color": ".15",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "lines.solid_capstyle": "round",
    "patch.edgecolor": "w",
    "patch.force_edgecolor": True,
    "xtick.top": False,
    "ytick.right": False,
    "axes.grid": True,
    "axes.facecolor": "white",
    "axes.edgecolor": ".8",
    "grid.color": ".8",
    "axes.spines.left": True,
    "axes.spines.bottom": True,
    "axes.spines.right": True,
    "axes.spines.top": True,
    "xtick.bottom": False,
    "ytick.left": False,
}
#: seaborn.color_palette("colorblind")
COLORBLIND = (
    "#0173b2",
    "#de8f05",
    "#029e73",
    "#d55e00",
    "#cc78bc",
    "#ca9161",
    "#fbafe4",
    "#949494",
    "#ece133",
    "#56b4e9",
)


def whitegrid(**extra: Any) -> Any:
    """A context in the whitegrid style, plus ``extra`` rc settings."""
    return mpl.rc_context({**WHITEGRID, **extra})


#: the reference (dense): a black star in every figure
REFERENCE_STYLE = {"color": "black", "marker": "*", "markersize": 15, "linestyle": "-", "reference": True}
#: markers and line styles of the methods within one colour group, in the group's name order
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h", "p", "d")
LINESTYLES = ("-", "--", "-.", ":")
#: role groups with a colour of their own (content-blind controls grey, as the papers draw baselines)
ROLE_COLORS = {"control": COLORBLIND[7], "learned": COLORBLIND[0], "merging": COLORBLIND[2]}
#: the role groups' first markers (index in MARKERS): controls circle and square, learned triangle, merging diamond
MARKER_OFFSETS = {"control": 0, "learned": 3, "merging": 2}
#: the other groups (families in name order, then weight-budget methods, then methods with no role) take these
#: in order; yellow last (faint on white); past the end they come round again darker
GROUP_COLORS = tuple(COLORBLIND[i] for i in (1, 3, 4, 9, 5, 6, 8))
ROLE_ORDER = ("control", "merging", "learned", "weight_budget")  # a method with several roles: the first listed


def _darker(color: Any, level: int) -> tuple[float, float, float]:
    """``color`` a little darker for each ``level`` (never black): the fifth and later methods of a large group, or
    a hue's second round of groups, keep a colour of their own."""
    f = 0.75**level
    return tuple(round(v * f, 4) for v in mpl.colors.to_rgb(color))  # type: ignore[return-value]


def method_group(family: Any, roles: set[str]) -> str:
    """The colour group of a method: "reference", else its declared family (the paper figures it belongs to),
    else its first role in ``ROLE_ORDER`` ("learned" for EViT, "merging" for ToMe), else "other"."""
    if "reference" in roles:
        return "reference"
    if isinstance(family, str) and family:
        return f"family:{family}"
    return next((r for r in ROLE_ORDER if r in roles), "other")


def _declarations(frame: pd.DataFrame) -> dict[str, tuple[Any, set[str]]]:
    """Method label -> (family, roles), from the first row of each method that declares them."""
    out: dict[str, tuple[Any, set[str]]] = {}
    role_names = ("reference", *ROLE_ORDER)
    for method, rows in frame.dropna(subset=["method"]).groupby("method", sort=True):
        family = rows["method_family"].dropna() if "method_family" in rows else pd.Series(dtype=object)
        roles = {
            r
            for r in role_names
            if role_column(r) in rows and rows[role_column(r)].map(lambda v: v is True or v == 1).any()
        }
        out[str(method)] = (family.iloc[0] if len(family) else None, roles)
    return out


def method_styles(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The look of every method of a suite, from its runs table (or summary): ``method``, ``method_family`` and the
    ``role_*`` columns. Call it once per report with the whole table and hand the result to every figure.

    Hue by group (``method_group``: the reference black, each family, each role group), from the colour-blind
    palette; marker and line style by method within its group, in name order (past four methods, each four a shade
    darker). A method's look depends on its group and its rank there only: adding a method changes no look outside
    its group, except that a new family takes its hue in name order among the families. The reference is the black
    star (a second reference label a grey one)."""
    groups: dict[str, list[str]] = {}
    for method, (family, roles) in _declarations(frame).items():
        groups.setdefault(method_group(family, roles), []).append(method)
    others = sorted(g for g in groups if g not in ROLE_COLORS and g != "reference")
    others.sort(key=lambda g: (not g.startswith("family:"), g == "other", g))  # families, weight_budget, other
    hue: dict[str, Any] = dict(ROLE_COLORS)
    for i, g in enumerate(others):
        hue[g] = _darker(GROUP_COLORS[i % len(GROUP_COLORS)], i // len(GROUP_COLORS))
    styles: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(groups.get("reference", [])):
        styles[method] = {**REFERENCE_STYLE, "color": "black" if i == 0 else _darker("#949494", i), "order": (0, i)}
    # each group starts at a marker of its own, so two groups of near hues (orange DynamicViT, vermillion SViTE)
    # differ in shape too
    first_marker = {**MARKER_OFFSETS, **{g: 5 + 2 * i for i, g in enumerate(others)}}
    for rank, g in enumerate([g for g in ROLE_COLORS if g in groups] + others, start=1):
        for i, method in enumerate(sorted(groups[g])):
            styles[method] = {
                # up to 4 methods share the group's colour exactly; then each 4 a shade darker
                "color": _darker(hue[g], i // len(LINESTYLES)),
                "marker": MARKERS[(first_marker[g] + i) % len(MARKERS)],
                "linestyle": LINESTYLES[i % len(LINESTYLES)],
                "markersize": 7,
                "reference": False,
                "group": g.removeprefix("family:"),
                "order": (rank, i),  # legend order: the reference, the controls, then group by group
            }
    return dict(sorted(styles.items()))
