"""Learning curves as a PNG drawn with Pillow: training loss and the monitored validation
metric per epoch, one line per run (``tessera train`` writes one, ``tessera compare`` two)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINE_COLOURS = ((31, 82, 160), (230, 120, 20), (60, 160, 60), (150, 40, 150))


def _panel(draw, box, title: str, series: dict[str, list[float]], font, colours: dict) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 18), title, fill=(0, 0, 0), font=font)
    values = [v for ys in series.values() for v in ys if np.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    epochs = max(len(ys) for ys in series.values())
    draw.text((left - 46, top), f"{high:.3g}", fill=(0, 0, 0), font=font)
    draw.text((left - 46, bottom - 12), f"{low:.3g}", fill=(0, 0, 0), font=font)
    draw.text((right - 60, bottom + 4), f"epoch {epochs}", fill=(0, 0, 0), font=font)
    for name, ys in series.items():
        points = [(left + (right - left) * (i / max(1, epochs - 1)), bottom - (bottom - top) * (y - low) / (high - low))
                  for i, y in enumerate(ys) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colours[name], width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colours[name])


def learning_curves_png(histories: dict[str, list[dict]], monitor: str, colours: dict | None = None) -> bytes:
    """Two panels (training loss, the monitored validation metric) per epoch, one line per run."""
    colours = colours or {name: LINE_COLOURS[i % len(LINE_COLOURS)] for i, name in enumerate(histories)}
    font = ImageFont.load_default(size=12)
    image = Image.new("RGB", (900, 380), "white")
    draw = ImageDraw.Draw(image)
    for i, key in enumerate(("loss", monitor)):
        series = {name: [float(row.get(key, np.nan)) for row in rows] for name, rows in histories.items()}
        title = "training loss" if key == "loss" else key
        _panel(draw, (70 + i * 440, 40, 70 + i * 440 + 360, 320), title, series, font, colours)
    for i, name in enumerate(histories):
        draw.rectangle((70 + i * 300, 350, 82 + i * 300, 362), fill=colours[name])
        draw.text((88 + i * 300, 349), name, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
