"""A confusion matrix as a PNG heat map drawn with Pillow (no matplotlib).

Cells are shaded by the row-normalised fraction (the share of each true class that went
to each prediction: the diagonal is per-class recall) and show the raw count.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOW = np.array([255, 255, 255], dtype=np.float64)   # fraction 0: white
HIGH = np.array([31, 82, 160], dtype=np.float64)    # fraction 1: dark blue
PAD = 10


def compact_count(n: int) -> str:
    """At most 4 characters: 9999, 12k, 3.4M, 120M, 5.1G (rounded)."""
    if n < 10_000:
        return str(n)
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        value = n / scale
        text = f"{value:.1f}{suffix}" if value < 9.95 else f"{value:.0f}{suffix}"
        if len(text) <= 4:
            return text
    return f"{n:.0e}"


def cell_colour(fraction: float) -> tuple[int, int, int]:
    return tuple(int(round(c)) for c in LOW + (HIGH - LOW) * fraction)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _vertical_text(text: str, font, fill=(0, 0, 0)) -> Image.Image:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w, h = _text_size(probe, text, font)
    strip = Image.new("RGB", (w + 4, h + 8), "white")
    ImageDraw.Draw(strip).text((2, 0), text, font=font, fill=fill)
    return strip.rotate(90, expand=True)


def render_confusion_png(confusion: np.ndarray, class_names, title: str = "", font_size: int = 14) -> bytes:
    """PNG bytes of ``confusion`` (rows = truth, columns = prediction) with labelled axes."""
    confusion = np.asarray(confusion, dtype=np.int64)
    k = confusion.shape[0]
    names = [str(n)[:24] for n in class_names]
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell = max(44, _text_size(probe, "8888M", font)[0] + 12)
    label_w = max((_text_size(probe, n, font)[0] for n in names), default=0) + PAD
    title_h = _text_size(probe, title or "X", font)[1] + 2 * PAD
    col_labels = [_vertical_text(n, font) for n in names]
    col_h = max((im.height for im in col_labels), default=0) + PAD
    axis = font_size + PAD
    left, top = axis + label_w + PAD, title_h + axis + col_h
    image = Image.new("RGB", (left + k * cell + PAD, top + k * cell + PAD), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, font=font, fill="black")
    draw.text((left, title_h), "predicted", font=font, fill="black")
    truth_axis = _vertical_text("truth", font)
    image.paste(truth_axis, (PAD // 2, top + max(0, (k * cell - truth_axis.height) // 2)))
    row_totals = confusion.sum(axis=1)
    for i in range(k):
        _, h = _text_size(draw, names[i], font)
        draw.text((axis + PAD, top + i * cell + (cell - h) // 2), names[i], font=font, fill="black")
        label = col_labels[i]
        image.paste(label, (left + i * cell + (cell - label.width) // 2, top - label.height - PAD // 2))
        for j in range(k):
            fraction = confusion[i, j] / row_totals[i] if row_totals[i] else 0.0
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=cell_colour(fraction), outline=(200, 200, 200))
            text = compact_count(int(confusion[i, j]))
            tw, th = _text_size(draw, text, font)
            draw.text((x + (cell - tw) // 2, y + (cell - th) // 2 - 2), text, font=font,
                      fill="white" if fraction > 0.5 else "black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
