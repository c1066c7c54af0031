"""Evaluation: COCO mask AP/AR and the classical baselines."""
