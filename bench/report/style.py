"""The report's look: seaborn's "whitegrid" style and "colorblind" palette, as values.

seaborn's own import costs about 0.9 s (it imports scipy.stats for estimators the report never draws), a third of
a cold `bench report` on 10,000 runs; the report uses nothing of it but these values. A test checks that they
equal seaborn's (``tests/test_report_figures.py``), so an upgrade that changes seaborn's look shows up there.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl

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


def palette(n: int) -> list[Any]:
    """``n`` colours: the colour-blind palette, or evenly spaced hues when there are more methods than it has."""
    if n <= len(COLORBLIND):
        return [mpl.colors.to_rgb(c) for c in COLORBLIND[:n]]
    cmap = mpl.colormaps["hsv"]
    return [cmap(i / n)[:3] for i in range(n)]
