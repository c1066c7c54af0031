"""Eval: COCO mask AP/AR (the classical baselines are generators: ``engine/generators/classical.py``)."""
