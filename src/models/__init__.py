"""The SSD method and its networks: specs, default boxes, matching, box coding, the loss, decoding."""
