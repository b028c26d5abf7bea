"""Horizontal bars drawn with eighth-block characters, and what the text widgets that draw them share."""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style as RichStyle
from rich.text import Text
from textual.geometry import Size
from textual.strip import Strip
from textual.visual import Visual, visualize
from textual.widget import Widget

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


Line = list[tuple[str, str]]  # one line of (text, rich style) pieces


class SizedText(Widget):
    """A text widget drawn once per (content width, data), through the line API.

    Subclasses build their content in ``make_lines(width)`` (a list of lines of
    (text, style) pieces, or a rich Text when it must wrap) and call ``changed()``
    when their data changes. Textual's default path converts a widget's text to
    strips for every layout measurement and again for every paint; here both read
    one cached list of strips, and plain lines become strips without that
    conversion at all (0.3 ms for a 20-token list instead of 2 ms).
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._version = 0
        # by width: layout may measure at one width and paint at another (fr rounding)
        self._strips: dict[int, tuple[tuple, list[Strip]]] = {}

    def make_lines(self, width: int) -> list[Line] | Text:
        raise NotImplementedError

    def changed(self) -> None:
        """The data changed: draw again, and measure again (the height may change)."""
        self._version += 1
        self._strips.clear()
        self.refresh(layout=True)

    def strips(self, width: int) -> list[Strip]:
        base = self.visual_style
        key = (self._version, base)
        hit = self._strips.get(width)
        if hit is None or hit[0] != key:
            if len(self._strips) >= 4:
                self._strips.clear()
            made = self.make_lines(width)
            if isinstance(made, Text):
                strips = Visual.to_strips(self, visualize(self, made), width, None, base)
            else:
                strips = _line_strips(made, width, base.rich_style)
            hit = self._strips[width] = (key, strips)
        return hit[1]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.strips(width)) if width else 0

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        lines = self.strips(width)
        return lines[y] if y < len(lines) else Strip.blank(width, self.visual_style.rich_style)

    def render(self) -> Text:
        """The content as one Text (for text selection and tests; painting uses render_line)."""
        made = self.make_lines(self.size.width or 80)
        if isinstance(made, Text):
            return made
        return Text("\n").join(Text.assemble(*line) for line in made)


@lru_cache(maxsize=512)
def _combined(base: RichStyle, style: str) -> RichStyle:
    return base + RichStyle.parse(style) if style else base


def _line_strips(lines: list[Line], width: int, base: RichStyle) -> list[Strip]:
    """Each line's pieces as one strip of exactly ``width`` cells (cropped or padded)."""
    out = []
    for line in lines:
        segments = [Segment(text, _combined(base, style)) for text, style in line if text]
        out.append(Strip(segments).adjust_cell_length(width, base))
    return out
