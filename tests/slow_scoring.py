"""train.py with a COCOeval that takes $SCORING_DELAY seconds more, for a test that scoring longer
than the process group's timeout (--dist-timeout) does not fail a run of several processes.

    SCORING_DELAY=20 python tests/slow_scoring.py <train.py's arguments>
"""
import os
import runpy
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import src.evaluation.evaluate as evaluate  # noqa: E402

real_coco_evaluate = evaluate.coco_evaluate


def slow_coco_evaluate(*args, **kwargs):
    print(f"slow COCOeval: {os.environ['SCORING_DELAY']} s more", file=sys.stderr, flush=True)
    time.sleep(float(os.environ["SCORING_DELAY"]))
    return real_coco_evaluate(*args, **kwargs)


if __name__ == "__main__":
    evaluate.coco_evaluate = slow_coco_evaluate
    sys.argv = [os.path.join(ROOT, "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
