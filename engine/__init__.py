"""freesolo-napari compute engine: pure Python + torch, no Qt or napari imports.

Layers (each imports only the ones below it):
1. ``images``, ``masks``, ``nms``, ``atomic``, ``device``, ``backbones``
2. ``features``, ``coco``, ``refine``, ``synthetic``
3. ``freemask``, ``evaluate``
4. ``cli`` (faces)
"""

__version__ = "0.1.0"
