# SSD300-ResNet50 / SSDLite-MobileNetV2. Build: docker build -t ssd .
# Train:  docker run --rm -it --gpus all -v /path/to/coco:/coco -v /path/to/trained_models:/trained_models --ipc=host ssd
# Infer:  docker run ... ssd python test_image.py --pretrained-model /trained_models/ssd.pth --input /data/x.jpg
# Page:   docker run --rm -p 8000:8000 -v /path/to/trained_models:/trained_models ssd \
#             python app.py --checkpoints /trained_models --host 0.0.0.0     # then http://127.0.0.1:8000/
# The base image carries torch 2.14.1 and torchvision 0.29.1, the versions requirements.txt pins (built for CUDA 13.0).
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# the full opencv-python build needs libGL and glib at run time
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1=* libglib2.0-0=* \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

WORKDIR /workspace/ssd
COPY requirements.txt .
# torch==2.14.1 and torchvision==0.29.1 are already installed, so pip keeps them
RUN pip install --no-cache-dir -r requirements.txt

COPY src/ src/
COPY train.py test_dataset.py test_image.py test_video.py app.py export_onnx.py convert_dataset.py hubconf.py \
     plot_logs.py ./

# app.py's page (inside a container it must listen on 0.0.0.0 for `docker run -p` to reach it)
EXPOSE 8000

CMD ["python", "train.py", "--data-path", "/coco", "--save-folder", "/trained_models", "--log-path", "/trained_models/runs"]
