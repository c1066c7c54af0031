"""Self-training (``freesolo selftrain``): pseudo-label selection, rounds, the run-folder layout
and the progress-event protocol that front ends (the napari panel) read instead of re-encoding."""
