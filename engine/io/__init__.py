"""Image, mask and COCO input/output: loaders, RLE and polygons, COCO files, atomic writes."""
