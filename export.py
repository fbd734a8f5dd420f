"""Export a yolopose checkpoint to ONNX (decode + NMS inside, static outputs) and check it; see yolopose/export/.

    python export.py --weights CKPT --out model.onnx [--image_size S] [--dynamic] [--no-nms] [--engine [--fp16]]
"""
from yolopose.export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
