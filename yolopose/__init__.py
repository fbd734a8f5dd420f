"""yolopose: heatmap-free multi-person pose estimation in the YOLO-Pose style."""
from yolopose.nn.model import VARIANTS, YOLOPose

__all__ = ["YOLOPose", "VARIANTS"]
__version__ = "0.1.0"
