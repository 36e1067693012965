"""Inline SVG pictures drawn on the server: a progress bar and a stacked bar of shares.

Each picture carries ``role="img"`` and a ``<title>`` saying in words what it shows, so a
screen reader (or a text browser) gets the numbers the bar draws. Colours come from a fixed
palette in order and are SVG attributes, not inline styles, so the console's Content Security
Policy can forbid inline styles; the legend next to a stacked bar names each part with its count.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#2b6cb0", "#2f855a", "#b7791f", "#9b2c2c", "#6b46c1", "#2c7a7b", "#975a16", "#4a5568")
WIDTH, HEIGHT = 300, 16


def progress(done: int, failed: int, total: int, label: str) -> str:
    """A bar: committed share in green, failed in red, the rest grey."""
    total = max(total, 0)
    text = f"{label}: {done} of {total} committed, {failed} failed"
    parts = ""
    if total:
        done_w = WIDTH * min(done, total) / total
        fail_w = WIDTH * min(failed, total - min(done, total)) / total
        parts = (
            f'<rect x="0" y="0" width="{done_w:.1f}" height="{HEIGHT}" fill="#2f855a"/>'
            f'<rect x="{done_w:.1f}" y="0" width="{fail_w:.1f}" height="{HEIGHT}" '
            'fill="#c53030"/>'
        )
    return (
        f'<svg class="bar" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'preserveAspectRatio="none" aria-label="{escape(text)}">'
        f"<title>{escape(text)}</title>"
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#e2e8f0"/>{parts}</svg>'
    )


def shares(counts: list[tuple[str, int]], label: str) -> str:
    """A stacked bar of ``(name, count)`` parts with a legend; names are escaped here."""
    total = sum(count for _, count in counts)
    words = ", ".join(f"{name}: {count}" for name, count in counts) or "none"
    text = f"{label}: {words}"
    rects, legend, x = [], [], 0.0
    for i, (name, count) in enumerate(counts):
        colour = PALETTE[i % len(PALETTE)]
        width = WIDTH * count / total if total else 0
        rects.append(
            f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="{HEIGHT}" fill="{colour}"/>'
        )
        legend.append(
            f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
            f'<rect width="10" height="10" fill="{colour}"/></svg>{escape(name)}: {count}</li>'
        )
        x += width
    return (
        f'<figure class="shares"><svg class="bar" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'preserveAspectRatio="none" aria-label="{escape(text)}"><title>{escape(text)}</title>'
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#e2e8f0"/>{"".join(rects)}'
        f'</svg><figcaption><ul class="legend">{"".join(legend)}</ul></figcaption></figure>'
    )
