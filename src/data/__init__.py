"""Detection data: COCO, VOC and YOLO read as COCO, annotation checks, the augmentation, the toy set."""
