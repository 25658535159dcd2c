"""Stage 4, attention off the mask: regions, what they look like, what they point at.

``offmask``: the off-mask regions of one nodule's map; ``descriptors``: lung field, density,
shape and direction of a region; ``structures``: the dense structure a region points at;
``morphology``: dilation and closing by a physical ball (the lung field's closing).
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "offmask": ["OffMaskSettings", "OffMaskRegion", "extract_offmask_regions", "REGION_COLUMNS"],
    "descriptors": ["RegionAnatomy", "lung_mask", "lung_components", "region_descriptors",
                    "direction_words", "offset_lps_mm", "describe_region"],
    "structures": ["AttendedStructure", "attended_structure"],
    "morphology": ["dilate_ball", "close_ball"],
})
