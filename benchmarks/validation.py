"""Validation time of a fresh model against a trained one: the network, and decode + NMS of the batch.

    python -m benchmarks.validation --weights best.ckpt [--images 64 --size 640 --top-k 30000 --batch 8]

A fresh model (the checkpoint's hyperparameters, new weights) scores nearly every anchor above validation's
0.001, so decode + NMS gets up to ``top_k`` candidates per image where a trained one gets a few hundred; the table
gives per image the candidates entering NMS, the forward time, the selection time and their sum for both, and the
ratio fresh / trained, all measured in the same run on the same generated scenes.
"""
from __future__ import annotations

import argparse
import time

import torch

from yolopose.export.verify import check_images
from yolopose.module import PoseModule
from yolopose.restore import load_module


def time_validation(module: PoseModule, images: torch.Tensor, batch: int) -> dict[str, float]:
    """Milliseconds per image of the forward pass and of ``module.select`` (decode + NMS), and the candidates."""
    fwd = sel = 0.0
    cands = 0
    with torch.inference_mode():
        module.select(module(images[:batch]))            # warm-up
        for start in range(0, len(images), batch):
            x = images[start:start + batch]
            t0 = time.perf_counter()
            raws = module(x)
            t1 = time.perf_counter()
            module.select(raws)
            t2 = time.perf_counter()
            fwd, sel = fwd + t1 - t0, sel + t2 - t1
            obj = torch.cat([r[..., 4].flatten(1) for r in raws], 1).sigmoid()
            cands += int((obj > module.hparams.conf_threshold).sum().clamp(max=module.hparams.top_k * len(x)))
    n = len(images)
    return {"forward": 1000 * fwd / n, "select": 1000 * sel / n, "candidates": cands / n}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.validation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a trained checkpoint")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--top-k", type=int, default=30000, help="validation's pre-NMS candidates (COCO configs: 30 000)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    trained = load_module(a.weights)
    hp = {k: v for k, v in trained.hparams.items() if not k.startswith("_")}
    torch.manual_seed(0)
    fresh = PoseModule(**{**hp, "init_from": None}).eval()
    images = torch.from_numpy(check_images(a.size, a.images, seed=1))
    rows = {}
    for name, module in (("trained", trained), ("fresh", fresh)):
        module.hparams.top_k = a.top_k
        rows[name] = time_validation(module, images, a.batch)
    print(f"{a.images} generated scenes at {a.size} px, batch {a.batch}, top_k {a.top_k}, conf 0.001, "
          f"{a.threads} thread(s), {a.weights}")
    print("| model | candidates / image | forward ms/img | decode + NMS ms/img | total ms/img |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['candidates']:.0f} | {r['forward']:.1f} | {r['select']:.1f} | "
              f"{r['forward'] + r['select']:.1f} |")
    t, f = (rows[n]["forward"] + rows[n]["select"] for n in ("trained", "fresh"))
    print(f"fresh / trained total: {f / t:.2f}x (decode + NMS alone: {rows['fresh']['select'] / rows['trained']['select']:.2f}x)")


if __name__ == "__main__":
    main()
