"""Pose inference on images, folders, videos or a webcam; see yolopose/predict.py (CLI), yolopose/inference.py (API).

    python predict.py --weights CKPT|model.onnx --source IMAGE|FOLDER|VIDEO|WEBCAM_INDEX --out DIR [--show]
"""
from yolopose.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
