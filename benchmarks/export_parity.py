"""fp32 noise between runtimes on exported graphs: what the export check's tolerance is set against.

    python -m benchmarks.export_parity --weights A.ckpt B.ckpt ... [--images 30] [--folder DIR] [--threads 2]

For every checkpoint: export it at the size it was trained at (``export_for_check``: the graph with its
decoded predictions as an extra output; export time measured), run ``--images`` images (generated scenes,
or the images of ``--folder``) one at a time through PyTorch, onnxruntime and OpenVINO (CPU, f32 inference
precision, and its default precision), and print one Markdown row per checkpoint and pair:
the largest difference of the decoded predictions (box and keypoint coordinates in pixels and in units of
the prediction's level stride, over the predictions scoring >= the check's ``min_score``, and over all;
probabilities over all), and whether the detections after NMS are the same (``verify.match_detections``
with the check's ``Tolerance``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from yolopose.restore import load_deployable
from yolopose.data.image_io import IMAGE_SUFFIXES, read_image
from yolopose.data.transforms import preprocess
from yolopose.export import ExportOptions, Tolerance, export_for_check, match_detections, outputs_to_detections
from yolopose.export.verify import decoded_diff, session


def _images(size: int, count: int, folder: str | None) -> np.ndarray:
    if folder is None:
        from yolopose.export import check_images

        return check_images(size, count, seed=1000)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    return np.stack([preprocess(read_image(f), size)[0] for f in files]).astype(np.float32)


def _openvino(proto: Any, precision: str | None, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(model=proto.SerializeToString(), weights=b""), "CPU", config)
    return lambda x: [np.asarray(v) for v in compiled({"images": x}).values()], compiled


def measure(weights: str, count: int, folder: str | None, threads: int, size: int | None = None) -> list[list[str]]:
    model, info = load_deployable(weights)
    size = size or info.image_size or 640
    opts = ExportOptions(imgsz=size, dynamic=True)
    t0 = time.perf_counter()
    proto, deploy = export_for_check(model, info, opts)
    export_s = time.perf_counter() - t0
    strides = deploy.decoder.strides(size)
    images = _images(size, count, folder)
    ort = session(proto)
    runners = {"onnxruntime": lambda x: ort.run(None, {"images": x})}
    try:
        runners["openvino f32"], _ = _openvino(proto, "f32", threads)
        runners["openvino default"], compiled = _openvino(proto, None, threads)
        default = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except ImportError:
        default = "-"
    outs: dict[str, list[list[np.ndarray]]] = {name: [] for name in runners}
    ref_dec, ref_det = [], []
    with torch.no_grad():
        for x in images:
            batch = x[None]
            dec = deploy.decoded(torch.from_numpy(batch))
            ref_dec.append(dec)
            ref_det.append(deploy.select(dec))
            for name, run in runners.items():
                outs[name].append(run(batch))
    tol = Tolerance()
    px = tol.cell * float(strides.max())
    rows = []
    name = Path(weights).name

    def row(pair: str, got_dec: list[torch.Tensor], want_dec: list[torch.Tensor], got_det: list, want_det: list,
            note: str = "") -> None:
        d = [decoded_diff(g, w, strides, info.num_classes, tol.min_score) for g, w in zip(got_dec, want_dec)]
        every = max(max(x.box_cells, x.kpt_cells) for x in
                    (decoded_diff(g, w, strides, info.num_classes) for g, w in zip(got_dec, want_dec)))
        same = sum(match_detections(g, w, tol, px)[1] is None for g, w in zip(got_det, want_det))
        dets = sum(int(w.num_dets.sum()) for w in want_det)
        rows.append([name, str(size), pair + note, f"{max(x.box_px for x in d):.2e}", f"{max(x.kpt_px for x in d):.2e}",
                     f"{max(max(x.box_cells, x.kpt_cells) for x in d):.1e}", f"{every:.1e}", f"{max(x.prob for x in d):.1e}",
                     f"{same}/{len(d)}", str(dets), f"{export_s:.1f}"])

    dec_of = {n: [torch.from_numpy(o[-1]) for o in v] for n, v in outs.items()}
    det_of = {n: [outputs_to_detections(o) for o in v] for n, v in outs.items()}
    row("onnxruntime vs PyTorch", dec_of["onnxruntime"], ref_dec, det_of["onnxruntime"], ref_det)
    for n in ("openvino f32", "openvino default"):
        if n in dec_of:
            row(f"{n} vs onnxruntime", dec_of[n], dec_of["onnxruntime"], det_of[n], det_of["onnxruntime"],
                f" ({default})" if n.endswith("default") else "")
    return rows


HEADER = ["checkpoint", "size", "runtimes", "max box px", "max kpt px", "max / stride", "all: max / stride",
          "max prob", "images with same detections", "detections", "export s"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_parity", description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="yolopose checkpoints")
    p.add_argument("--images", type=int, default=30, help="images per checkpoint")
    p.add_argument("--folder", default=None, help="images to use (default: generated scenes with people)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image_size", type=int, default=None,
                   help="export size (default: each checkpoint's training size, else 640)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for w in a.weights:
        for r in measure(w, a.images, a.folder, a.threads, a.image_size):
            print("| " + " | ".join(r) + " |", flush=True)
    print(f"\nTolerance: {Tolerance().cell:g} x stride for coordinates, {Tolerance().prob:g} for probabilities.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
