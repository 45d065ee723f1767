# The top-level test_dataset.py, test_image.py and test_video.py are inference scripts, not tests.
collect_ignore = ["test_dataset.py", "test_image.py", "test_video.py"]
