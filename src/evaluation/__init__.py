"""Predictions over a loader, COCO and VOC mAP, and the report that explains them."""
