"""Images in, detections out: the one detector of the scripts, its drawing, and ONNX export."""
