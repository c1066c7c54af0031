"""Mask generators beside Free Mask, and the merge that ranks all their masks together.

``maskcut``: normalised cuts on the same key map (CutLER's MaskCut), several masks per image;
``classical``: threshold + watershed and graph-based regions from the image itself; ``merge``:
every generator's masks scored by one measure, through one Matrix NMS, each keeping its ``source``.
"""
