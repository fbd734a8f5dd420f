"""INT8 against FP32, same run: latency in ONNX Runtime and OpenVINO, and (with a validation set) keypoint AP.

    python -m benchmarks.quantization --weights demo.ckpt [--variants n,s] [--size 640] [--threads 2]
                                      [--val-ann val.json --val-images DIR --ap-size 192]

Latency: batch 1, ``--size`` px, ``--threads`` intra-op threads, decode + NMS included (the exported file as
``predict.py`` runs it), median of ``--runs``, every file timed in rotation; for the variants not given as a
checkpoint the network is the variant's fresh weights with BatchNorm statistics measured on generated scenes
(speed does not depend on what the weights learned; the INT8 file is calibrated on those scenes). The FLOP floor is
the network's multiply-accumulates at the measured rate of a 3x3 conv (``benchmarks.common``), i.e. what a perfectly
efficient FP32 runtime would need. AP: the checkpoint exported at ``--ap-size`` in FP32 and INT8 (calibrated on
``--calib-images`` training images of its run) and scored with pycocotools, per runtime.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from yolopose.export.contract import ExportOptions
from yolopose.export.lowp import quantize_int8, score_file
from yolopose.export.pipeline import export_model
from yolopose.export.verify import check_images


def _fresh_checkpoint(variant: str, act: str, path: Path) -> Path:
    """A checkpoint of ``variant`` with fresh weights and BatchNorm statistics measured on generated scenes."""
    import pytorch_lightning as pl

    from yolopose.callbacks import recompute_batchnorm_stats
    from yolopose.geometry import default_sigma_list
    from yolopose.module import PoseModule

    torch.manual_seed(0)
    module = PoseModule(num_keypoints=17, variant=variant, act=act, sigmas=default_sigma_list(17), category_ids=[1])
    net = module.model.eval()
    recompute_batchnorm_stats(net, [torch.from_numpy(check_images(320, 8, seed=11))])
    module.ema.module.load_state_dict(net.state_dict())
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def _files(ckpt: Path, size: int, out: Path, calibration: np.ndarray) -> tuple[Path, Path]:
    import onnx

    from yolopose.restore import load_deployable

    model, info = load_deployable(ckpt)
    fp32 = export_model(model, info, out / f"{ckpt.stem}_{size}_fp32.onnx", ExportOptions(imgsz=size), check=False).path
    int8 = out / f"{ckpt.stem}_{size}_int8.onnx"
    onnx.save(quantize_int8(onnx.load(str(fp32)), calibration), str(int8))
    return fp32, int8


def latencies(files: dict[str, Path], image: np.ndarray, threads: int, runs: int) -> dict[tuple[str, str], float]:
    """Median ms of each (name, runtime), timed in rotation."""
    from yolopose.inference import load_predictor

    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401
        runtimes.append("openvino")
    except ImportError:
        pass
    preds = {(n, rt): load_predictor(p, threads=threads, runtime=rt) for n, p in files.items() for rt in runtimes}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in preds}
    for p in preds.values():
        p.run(image)
        p.run(image)
    for _ in range(runs):
        for k, p in preds.items():
            t0 = time.perf_counter()
            p.run(image)
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import conv3x3_gflops
    from yolopose.export.checkdata import check_data
    from yolopose.nn.complexity import count_macs
    from yolopose.restore import load_deployable

    p = argparse.ArgumentParser(prog="python -m benchmarks.quantization", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a trained checkpoint (its variant's row uses it)")
    p.add_argument("--variants", default="n,s")
    p.add_argument("--act", default="silu", help="activation of the fresh variants (silu or relu)")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--ap-size", type=int, default=0, help="also score FP32 vs INT8 at this size (0: skip)")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--val-ann", default=None)
    p.add_argument("--val-images", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    weights = Path(a.weights)
    trained_variant = load_deployable(weights)[1].variant
    image = check_images(a.size, 1, seed=5)
    calib = check_images(a.size, 16, seed=9)
    rate = conv3x3_gflops(repeats=20)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files: dict[str, Path] = {}
        macs: dict[str, float] = {}
        for v in a.variants.split(","):
            ckpt = weights if v == trained_variant else _fresh_checkpoint(v, a.act, out / f"fresh_{v}_{a.act}.ckpt")
            files[f"{v} fp32"], files[f"{v} int8"] = _files(ckpt, a.size, out, calib)
            model = load_deployable(ckpt)[0]
            macs[v] = count_macs(model, a.size) / 1e9
        ms = latencies(files, image, a.threads, a.runs)
        print(f"{a.size} px, batch 1, {a.threads} thread(s), decode + NMS included, median of {a.runs}; conv rate "
              f"{rate:.0f} GFLOP/s")
        print("| variant | runtime | FP32 ms | INT8 ms | INT8 speed-up | FP32 / FLOP floor | INT8 / FLOP floor |")
        print("|---|---|---|---|---|---|---|")
        for v in a.variants.split(","):
            floor = 2 * macs[v] / rate * 1000
            for rt in ("onnxruntime", "openvino"):
                if (f"{v} fp32", rt) not in ms:
                    continue
                f32, i8 = ms[(f"{v} fp32", rt)], ms[(f"{v} int8", rt)]
                src = "trained" if v == trained_variant else f"fresh, {a.act}"
                print(f"| {v} ({src}) | {rt} | {f32:.1f} | {i8:.1f} | {f32 / i8:.2f}x | {f32 / floor:.2f} | "
                      f"{i8 / floor:.2f} |", flush=True)
        if a.ap_size:
            data = check_data(weights, a.ap_size, None, a.calib_images, a.val_ann, a.val_images)
            fp32, int8 = _files(weights, a.ap_size, out, data.calibration)
            print(f"\nAP on {len(data.val_images)} images of {data.val_source} at {a.ap_size} px "
                  f"(INT8 calibrated on {data.calibration_source}):")
            for rt in ("onnxruntime", "openvino"):
                try:
                    ref, got = (score_file(f, data.val_images, data.gt, load_deployable(weights)[1].sigmas, rt)
                                for f in (fp32, int8))
                except Exception as exc:  # noqa: BLE001 - a runtime that is not installed
                    print(f"  {rt}: not measured ({type(exc).__name__})")
                    continue
                print(f"  {rt}: kpt AP {ref['kpt_AP']:.3f} -> {got['kpt_AP']:.3f} ({got['kpt_AP'] - ref['kpt_AP']:+.3f}), "
                      f"box AP {ref['box_AP']:.3f} -> {got['box_AP']:.3f} ({got['box_AP'] - ref['box_AP']:+.3f})")


if __name__ == "__main__":
    main()
