"""Tensor operations shared by the generators and the student (Matrix NMS)."""
