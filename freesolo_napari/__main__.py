"""``python -m freesolo_napari``: napari with the FreeSOLO panel docked and a sample loaded."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import napari

    args = sys.argv[1:] if argv is None else argv
    viewer = napari.Viewer(title="FreeSOLO")
    viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    if args:
        viewer.open(args)
    else:
        viewer.open_sample("freesolo-napari", "synthetic-photo")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
