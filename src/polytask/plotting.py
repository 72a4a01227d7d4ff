"""Matplotlib set-up shared by every plot polytask writes: headless backend, and fonts for CJK labels.

Task and label names may be Chinese. Matplotlib's default font (DejaVu Sans) has no CJK glyphs, so when a
plot's text needs them a CJK font installed on the machine is put first (Noto Sans CJK, Source Han Sans,
WenQuanYi, SimHei, ...; Debian/Ubuntu: ``apt install fonts-noto-cjk``). Without one the plot is still
written — the missing glyphs show as boxes, and :func:`cjk_font` returning None lets a report say so.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
             "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
             "Heiti SC", "AR PL UMing CN", "Droid Sans Fallback")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def needs_cjk(texts: Iterable[str]) -> bool:
    from polytask.tasks.token_classification import is_cjk

    return any(is_cjk(c) for t in texts for c in str(t))


def cjk_font() -> str | None:
    """The name of an installed font with CJK glyphs, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


@contextlib.contextmanager
def plot_style(texts: Iterable[str]) -> Iterator[None]:
    """Within the block, figures can show ``texts`` (task names, labels): a CJK font first when needed."""
    plt = pyplot()
    rc = {}
    if needs_cjk(texts):
        font = cjk_font()
        if font:
            rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]}
    with plt.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        yield
