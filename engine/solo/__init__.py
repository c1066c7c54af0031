"""SOLOv2 student (class-agnostic): model, label assignment, losses, training and prediction."""
