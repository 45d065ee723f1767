"""SSD300-ResNet50 and SSDLite-MobileNetV2: models, default boxes, box coding, loss and COCO data."""
