"""Data for tests and demos (synthetic images with ground truth)."""
