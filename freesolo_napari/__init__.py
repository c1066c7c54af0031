"""napari plugin for FreeSOLO: widgets and glue only; every computation is an ``engine`` call.

The npe2 manifest is the repository's root ``plugins.yaml``; ``freesolo_napari/plugins.yaml``
is a link to it, so editable installs load that very file and wheels carry a copy of it.
"""

__version__ = "0.1.0"
