"""What a checkpoint holds (ours, the original's, NVIDIA's), read and written in one place."""
