"""freesolo-napari compute engine: pure Python + torch, no Qt or napari imports.

Layers, lowest first; each imports only the ones below it (``tests/test_architecture.py``):
0. ``structures``, ``geometry``
1. ``ops`` (Matrix NMS, guided filter, mask measurements), ``io`` (images, RLE, COCO, atomic writes, export)
2. ``runtime`` (devices, progress, the batch loop, processes and shards)
3. ``backbones``
4. ``freemask`` (the teacher), ``data`` (synthetic images)
5. ``solo`` (the student), ``eval`` (COCO metrics, classical baselines)
6. ``selftrain`` (pseudo-labels, rounds, run-folder layout, progress events)
7. ``demo``;  8. ``cli``
"""

__version__ = "0.1.0"
