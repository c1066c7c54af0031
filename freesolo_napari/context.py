"""What a panel section may use of the panel: a narrow, explicit set of capabilities.

Sections (``freesolo_napari.sections``) receive a :class:`PanelContext`, never the panel: they
never import ``panel.py`` and never reach into its members. Every call here is made on the GUI
thread; workers only return results, and the callbacks that receive them use the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from freesolo_napari.compute import Computed, ExtractorSource
    from freesolo_napari.layers import FreeMaskUpdate
    from freesolo_napari.state import PanelState


class Review(Protocol):
    """The review section as others use it (``sections.review.ReviewControls``)."""

    def is_edited(self, name: str) -> bool: ...

    def after_update(self, labels_layer) -> None: ...

    def forget(self, name: str) -> None: ...


@dataclass(frozen=True)
class PanelContext:
    viewer: object  # the napari viewer
    state: "PanelState"  # owned by the GUI thread
    notify: Callable[[str], None]  # status line + a napari warning
    set_status: Callable[[str], None]  # status line only
    report_error: Callable[[Exception], None]  # a failed Free Mask job, as a notification
    set_busy: Callable[..., None]  # set_busy(busy, message=None, job=None): Run/Cancel, progress, the job Cancel stops
    set_progress: Callable[[int, int], None]  # (value, maximum); maximum 0 = the busy indicator
    set_run_button: Callable[[str, str], None]  # (text, tooltip) of the Run button
    current_image: Callable[[], str]  # the panel's image layer name ('' if none)
    current_view: Callable[[], object]  # planes.View of the plane and channel on screen (None: no image)
    view_changed: Callable[[], None]  # the plane or channel changed: catch up (post-processing) or say "no masks"
    select_image: Callable[[str], None]  # make an image layer the panel's image
    current_params: Callable[[], object]  # FreeMaskParams of the controls; ValueError names a bad field
    current_generators: Callable[[], object]  # GeneratorConfig of the generator toggles; ValueError: none is on
    show_update: Callable[["FreeMaskUpdate"], None]  # show a Free Mask result (asks before replacing edits)
    accept: Callable[["Computed"], None]  # store a worker's features (and extractor), then show its update
    show_instances: Callable[..., bool]  # (name, instances, plane=None): show engine instances (asks before replacing edits)
    extractor_source: Callable[[], "ExtractorSource"]  # what a Free Mask job computes features with
    feature_config: Callable[[], object]  # the FeatureConfig runs compute with (the feature cache key)
    current_tiling: Callable[[], tuple]  # (tile px or None, overlap px) runs compute features with (sections.tiling)
    review: Review
