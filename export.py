"""Export a yolopose checkpoint to ONNX (decode + NMS inside, static outputs) and check it; see yolopose/export/.

    python export.py --ckpt CKPT --out model.onnx [--imgsz 640] [--dynamic] [--no-nms] [--engine [--fp16]]
"""
from yolopose.export import main

if __name__ == "__main__":
    raise SystemExit(main())
