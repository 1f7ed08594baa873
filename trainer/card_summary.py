"""What a person reading the end of a training log needs to know about the export: what
decides predict's masks and objects (the calibrated threshold or decoder) and at what the
card's validation scores were taken."""
from __future__ import annotations

from schemas import model_card as mc
from schemas.example import SEGMENTATION
from trainer import metrics
from trainer.calibrate import OBJECT_RULE_KEYS


def calibration_summary(card: mc.ModelCard) -> list[str]:
    """What decides predict's masks and objects, and at what the card's validation scores are
    taken (a calibrated threshold's dice is not the dice at 0.5)."""
    if card.task != SEGMENTATION:
        return []
    lines = []
    scores = "/".join(k for k in metrics.SEGMENTATION_METRICS if k in card.metrics)
    if card.threshold is not None:
        line = f"Threshold: foreground where P(foreground) >= {card.threshold:.3g} ({card.threshold_rule})"
        pixel = card.calibration.get("pixel_threshold")
        if pixel is not None:
            line += f"; the pixel rule ({card.calibration.get('pixel_rule')}) gave {pixel:.3g}"
        lines.append(line)
        if scores:
            lines.append(f"  the card's {scores} are of the foreground at this threshold on the validation split "
                         f"(not at 0.5); predict uses it unless --threshold")
    elif scores:
        lines.append(f"Masks: the most probable class; the card's {scores} are means over the foreground classes "
                     "present in the validation split")
    decoder = card.decoder
    if decoder.get("mode") in ("seeded", "partition"):
        line = (f"Decoder: {decoder['mode']}, seeds where P(interior) >= {decoder.get('seed', 0.5):.3g}, foreground "
                f"where P(boundary) + P(interior) >= {decoder.get('foreground', 0.5):.3g}, objects >= "
                f"{decoder.get('min_size', 0)} px, expand {decoder.get('expand', 0)} px, "
                f"{decoder.get('connectivity', 4)}-connected ({decoder.get('rule', 'not calibrated')})")
        if "value" in decoder:
            name = OBJECT_RULE_KEYS.get(card.calibration.get("rule"), "value")
            line += f": {name} {decoder['value']:.4f} on the validation images, with this decoder"
        lines.append(line)
        if scores:
            lines.append(f"  the card's {scores} are per-pixel scores of the most probable of background / boundary "
                         "/ interior (means over boundary and interior), not of the decoded objects")
    return lines
