"""The HU windows of the network's input channels, by name, and their text form.

Apart from :mod:`discovery.model.rois` (which uses them, and gives them too) so that the
command line can list and parse them without importing SciPy or the ROI code.
"""

from __future__ import annotations

import math

__all__ = ["HU_WINDOWS", "DEFAULT_INPUT_WINDOWS", "parse_windows"]

#: Named HU windows ``(low, high)`` for the network's input channels (``discovery train
#: --windows``).  ``lung``: aerated lung, emphysema (< -950 HU) and ground glass (up to the
#: usual -300 HU) over the whole scale; ``soft``: the mediastinal window (level 40, width 400),
#: solid components, fat against soft tissue; ``dense``: what lies above it, calcium (a few
#: hundred HU), bone and metal (> 2000 HU), zero for everything else; ``lucent``: what is
#: darker than aerated lung (emphysema, bullae, cysts, the air of a cavity; the emphysema
#: bound -950 HU at its middle), aerated lung and everything denser at 1; ``wide``: the single
#: window of the demo model, air to metal.
HU_WINDOWS = {"lung": (-1000.0, -300.0), "soft": (-160.0, 240.0), "dense": (240.0, 3000.0),
              "lucent": (-1000.0, -900.0), "wide": (-1000.0, 3000.0)}
#: The windows ``discovery train`` uses unless told otherwise (docs/guide/models.md#input):
#: three ranges side by side and the bottom of the first again, each at full contrast.
#: With ``wide`` in place of ``dense`` a metal-bright bead that carried the label was not
#: learned (the bead is 0.26 -> 0.93 in ``wide``, whose spread over nodule ROIs is 0.09; in
#: ``dense`` it is the only thing above zero).  Without ``lucent`` an air space darker than
#: the lung that carried the label was not learned at all (oracle delta-p 0.000 with
#: ``lung,soft,dense``, -0.71 with ``lucent`` added): in ``lung`` it is a dip of 0.19 in the
#: lung's textured 0.2, in ``lucent`` the only thing below the flat 1 of the lung.
DEFAULT_INPUT_WINDOWS = ("lung", "soft", "dense", "lucent")


def parse_windows(text: str) -> tuple[tuple[float, float], ...]:
    """HU windows from text: names of :data:`HU_WINDOWS` and/or ``low:high`` pairs, comma
    separated (e.g. ``"lung,wide"`` or ``"-1000:-300,-160:240"``).

    Raises ValueError naming the part that is neither a known name nor a valid pair."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if part in HU_WINDOWS:
            out.append(HU_WINDOWS[part])
            continue
        lo, sep, hi = part.rpartition(":")
        try:
            window = (float(lo), float(hi)) if sep else None
        except ValueError:
            window = None
        if window is None or not (all(map(math.isfinite, window)) and window[1] > window[0]):
            raise ValueError(f"HU window {part!r} is neither one of {sorted(HU_WINDOWS)} nor "
                             "LOW:HIGH with HIGH > LOW (e.g. -1000:-300)")
        out.append(window)
    return tuple(out)
