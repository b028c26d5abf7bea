"""Horizontal bars drawn with eighth-block characters (shared by the bar widgets)."""

from __future__ import annotations

_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, scale: float, width: int) -> str:
    """A bar ``width * |value| / scale`` cells long, to 1/8 cell."""
    if scale <= 0 or value != value:  # NaN
        return ""
    eighths = round(min(abs(value) / scale, 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def fmt(value: object, digits: int = 3) -> str:
    """Compact number formatting for tables; '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def clip(s: str, n: int) -> str:
    """``s`` cut to ``n`` cells with an ellipsis."""
    return s if len(s) <= n else s[: max(0, n - 1)] + "…"
