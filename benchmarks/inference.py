"""Deployed inference on the CPU: ONNX Runtime vs PyTorch eager, and the cost of decode + NMS.

    python -m benchmarks.inference [--size 640] [--repeats 10] [--threads 2] [--quick]

1. The exported graph (network + decode + NMS, ``yolopose.export``) of ``n`` and ``s`` at batch 1 in
   onnxruntime, the same ``DeployModel`` in PyTorch eager, and the FLOP floor: model GFLOPs / a 3x3
   conv's GFLOP/s measured in the same run on the same threads.
2. decode + ``select_detections`` for an image with 1, 10 and 100 people (well-separated clusters of
   high-score boxes over the usual low-score background), in PyTorch and as an ONNX graph, at the deploy
   threshold (0.25: candidates grow with people) and the validation one (0.001: always ``top_k``).
3. The validation pre-NMS cap ``top_k``: 1000 vs 30 000 (the COCO configs', YOLOv5's ``max_nms``) on a crowded
   image whose people fire 27 candidates each (3 x 3 cells x 3 anchors), a quarter of them faintly (occluded):
   people found, and the time of decode + select (batch 1 and 8) as a ratio to top_k 1000 in the same run.

Weights: BatchNorm statistics are measured on generated scenes first, so that the outputs vary like a
trained model's (a fresh model's activations shrink layer by layer and every score sits at its prior).
The network's time does not depend on it (checked: no denormals, same eager time); the graph's
TopK/NMS sees realistic candidates. Under load from other jobs, ``--threads 1`` gives the stable figures:
OpenMP's spin-waiting makes 2-thread PyTorch many times slower while another job holds the cores.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import warnings

import torch

from benchmarks.common import (Config, Table, conv3x3_gflops, load_average, load_note, machine_line, median_time,
                               print_table, set_threads)
from yolopose import YOLOPose
from yolopose.geometry import decode
from yolopose.nn.complexity import count_macs
from yolopose.postprocess import select_detections

K = 17


def calibrated(variant: str, size: int) -> YOLOPose:
    """``YOLOPose(variant)`` with BatchNorm statistics measured on two generated scenes (module docstring)."""
    from yolopose.export import check_images

    torch.manual_seed(0)
    model = YOLOPose(variant, num_keypoints=K)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(check_images(size, 2, seed=10)))
    return model.eval()


def ort_session(data: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def to_onnx(module: torch.nn.Module, args: tuple, names: list[str]) -> bytes:
    from yolopose.export import register_nms_symbolic

    register_nms_symbolic()
    f = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, dynamo=False, opset_version=17, input_names=names)
    return f.getvalue()


# --------------------------------------------------------------------------- 1. model latency
def latency_rows(variants: str, size: int, repeats: int, threads: int, conv_rate: float) -> list[list[object]]:
    from yolopose.export import DeployModel, check_images

    rows = []
    x = torch.from_numpy(check_images(size, 1, seed=3))
    for v in variants:
        model = calibrated(v, size)
        gflops = 2 * count_macs(model, size) / 1e9
        deploy = DeployModel(model, 1).eval()  # DEPLOY_DEFAULTS: conf 0.25, iou 0.65, max_det 100, top_k 1000
        with torch.inference_mode():
            t_torch = median_time(lambda d=deploy: d(x), repeats=repeats)
        sess = ort_session(to_onnx(deploy, (x,), ["images"]), threads)
        feed = {"images": x.numpy()}
        t_ort = median_time(lambda s=sess, f=feed: s.run(None, f), repeats=repeats)
        floor = gflops / conv_rate
        rows.append([v, size, f"{gflops:.1f}", f"{floor * 1e3:.1f}", f"{t_torch * 1e3:.1f}", f"{t_ort * 1e3:.1f}",
                     f"{t_torch / t_ort:.2f}", f"{t_ort / floor:.2f}"])
    return rows


# --------------------------------------------------------------------------- 2. decode + NMS
STRIDES = (8, 16, 32, 64)


def person_cells(people: int, size: int) -> list[tuple[int, int]]:
    """P3 cells ``(row, column)`` of ``people`` persons on a grid 64 px apart (8 P3 cells), row by row."""
    per_row = size // 64
    if people > per_row * per_row:
        raise ValueError(f"at most {per_row ** 2} well-separated people fit in {size} px")
    return [(4 + 8 * (p // per_row), 4 + 8 * (p % per_row)) for p in range(people)]


def crowd_raws(people: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """Raw head maps ``(1, 3, H, W, 5 + 1 + 3K)`` per level: background objectness ~0.0025 everywhere, and
    ``people`` persons on a grid (64 px apart), each firing a 3x3 cluster of P3 cells with one anchor
    (44 x 40 px boxes, scores 0.5-0.98): 9 overlapping candidates per person, one survives NMS."""
    g = torch.Generator().manual_seed(seed)
    raws = []
    for s in STRIDES:
        h = size // s
        r = torch.randn(1, 3, h, h, 6 + 3 * K, generator=g) * 0.5
        r[..., 4] = -6.0 + 0.3 * torch.randn(1, 3, h, h, generator=g)
        raws.append(r)
    p3 = raws[0]
    for cy, cx in person_cells(people, size):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cell = p3[0, 1, cy + dy, cx + dx]
                cell[0], cell[1] = -2.0 * dx, -2.0 * dy     # centres pulled towards the person's centre
                cell[2:4] = 0.0                             # anchor size
                cell[4] = 4.0 - abs(dx) - abs(dy)           # objectness logit 4 / 3 / 2
    return raws


class DecodeSelect(torch.nn.Module):
    """raws -> decode -> select_detections (the post-processing part of the deploy graph)."""

    def __init__(self, anchors: torch.Tensor, conf: float) -> None:
        super().__init__()
        self.register_buffer("anchors", anchors)
        self.conf = conf

    def forward(self, *raws: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det = select_detections(decode(list(raws), self.anchors, STRIDES, 1), 1, self.conf, 0.65, 300, 1000)
        return det.num_dets, det.boxes, det.scores, det.labels, det.keypoints


def nms_rows(size: int, repeats: int, threads: int, people_counts: tuple[int, ...] = (1, 10, 100)) -> list[list[object]]:
    """Rows ``[conf, people, candidates, detections, PyTorch ms, ONNX Runtime ms]`` of decode + select_detections."""
    import onnx

    from yolopose.export import set_nms_thresholds
    from yolopose.nn.model import default_anchors

    anchors = torch.tensor(default_anchors(4))
    rows = []
    graph = None
    for conf in (0.25, 0.001):
        module = DecodeSelect(anchors, conf)
        for people in people_counts:
            raws = crowd_raws(people, size)
            with torch.inference_mode():
                det = module(*raws)
                cands = int((decode(raws, anchors, STRIDES, 1)[..., 4] > conf).sum())
                t_torch = median_time(lambda m=module, r=raws: m(*r), repeats=repeats)
            if graph is None:
                graph = onnx.load_from_string(to_onnx(module, tuple(raws), [f"raw{i}" for i in range(4)]))
            sess = ort_session(set_nms_thresholds(graph, conf=conf).SerializeToString(), threads)
            feed = {f"raw{i}": r.numpy() for i, r in enumerate(raws)}
            got = sess.run(None, feed)
            assert int(got[0][0]) == int(det[0][0]), "onnxruntime and PyTorch disagree on the detections"
            t_ort = median_time(lambda s=sess, f=feed: s.run(None, f), repeats=repeats)
            rows.append([conf, people, min(cands, 1000), int(det[0][0]), f"{t_torch * 1e3:.2f}", f"{t_ort * 1e3:.2f}"])
    return rows


def nms_title(size: int) -> str:
    return (f"decode + select_detections at {size}x{size} (N = {3 * sum((size // s) ** 2 for s in STRIDES)} "
            "predictions, top_k 1000, max_det 300)")


NMS_HEADER = ["conf", "people", "candidates > conf (<= top_k)", "detections", "PyTorch ms", "ONNX Runtime ms"]
LATENCY_HEADER = ["variant", "size", "GFLOPs", "FLOP floor ms", "PyTorch eager ms", "ONNX Runtime ms", "eager / ORT",
                  "ORT / floor"]


def run_latency(cfg: Config, size: int | None = None, repeats: int | None = None) -> list[Table]:
    """Deployed-model latency table (``python -m benchmarks --only inference``): CPU, ``cfg.threads`` threads."""
    size = size or (320 if cfg.quick else 640)
    repeats = repeats or (3 if cfg.quick else 10)
    set_threads(cfg.threads)
    notes: list[str] = []
    with load_note(notes):
        rate = conv3x3_gflops()
        rows = latency_rows("n" if cfg.quick else "ns", size, repeats, cfg.threads, rate)
    return [Table(f"Deployed model latency, batch 1, {size}x{size}, K={K} (network + decode + NMS; CPU, "
                  f"{cfg.threads} thread(s), median of {repeats})", LATENCY_HEADER, rows,
                  [(f"3x3 conv reference rate measured now: {rate:.0f} GFLOP/s; floor = GFLOPs / that rate. BatchNorm "
                   "statistics measured on generated scenes (see benchmarks/inference.py)."), *notes])]


def run_nms(cfg: Config, size: int = 640, repeats: int | None = None,
            people: tuple[int, ...] = (1, 10, 100)) -> list[Table]:
    """decode + NMS table at 1/10/100 people (``python -m benchmarks --only nms``)."""
    repeats = repeats or (5 if cfg.quick else 10)
    set_threads(cfg.threads)
    notes: list[str] = []
    with load_note(notes):
        rows = nms_rows(size, repeats, cfg.threads, people)
    return [Table(nms_title(size) + f" (CPU, {cfg.threads} thread(s), median of {repeats})", NMS_HEADER, rows,
                  ["conf 0.25: deploy threshold (candidates grow with people); 0.001: validation (always top_k).",
                   *notes])]


# --------------------------------------------------------------------------- 3. the validation top_k
def dense_crowd_raws(people: int, size: int, faint_every: int = 4, seed: int = 0,
                     background: float = -6.0) -> list[torch.Tensor]:
    """Like ``crowd_raws``, but each person fires its 3 x 3 P3 cells with all 3 anchors, decoded to the same
    44 x 40 px box (27 candidates per person, objectness logits 4 / 3 / 2 by distance from the centre), and
    every ``faint_every``-th person 5 logits lower (an occluded person: best score 0.27). ``background``: the
    objectness logit of every other prediction (-6: 0.0025, all above validation's 0.001; -8: 0.0003, below)."""
    raws = crowd_raws(0, size, seed)
    for r in raws:
        r[..., 4] += background + 6.0
    anchors = torch.tensor(default_anchors_p3())                                 # (3, 2) pixels
    target = torch.tensor([44.0, 40.0])
    wh_logit = torch.logit((target / anchors).sqrt() / 2)                         # (2 sigmoid(t))^2 * anchor = target
    p3 = raws[0]
    for p, (cy, cx) in enumerate(person_cells(people, size)):
        drop = 5.0 if faint_every and p % faint_every == faint_every - 1 else 0.0
        for a in range(3):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    cell = p3[0, a, cy + dy, cx + dx]
                    cell[0], cell[1] = -2.0 * dx, -2.0 * dy
                    cell[2:4] = wh_logit[a]
                    cell[4] = 4.0 - abs(dx) - abs(dy) - drop
    return raws


def default_anchors_p3() -> list[list[float]]:
    from yolopose.nn.model import default_anchors

    return default_anchors(4)[0]


TOP_K_HEADER = ["people (faint)", "background score", "top_k", "batch", "candidates > conf into NMS", "people found",
                "ms per image", "x top_k 1000"]


def top_k_rows(size: int, repeats: int, people_counts: tuple[int, ...] = (10, 100),
               top_ks: tuple[int, ...] = (1000, 30000), batches: tuple[int, ...] = (1, 8)) -> list[list[object]]:
    """Rows ``TOP_K_HEADER`` of decode + ``select_detections`` at the validation settings (conf 0.001,
    IoU 0.65, max_det 300), each top_k timed round-robin with the others on the same input."""
    from yolopose.nn.model import default_anchors

    anchors = torch.tensor(default_anchors(4))
    rows = []
    for people, background in ((p, b) for p in people_counts for b in (-6.0, -8.0)):
        single = dense_crowd_raws(people, size, background=background)
        above = int((decode(single, anchors, STRIDES, 1)[..., 4] > 0.001).sum())
        for batch in batches:
            raws = [r.expand(batch, *r.shape[1:]).contiguous() for r in single]
            fns = {k: (lambda k=k, r=raws: select_detections(decode(r, anchors, STRIDES, 1), 1, 0.001, 0.65, 300, k))
                   for k in top_ks}
            timings: dict[int, list[float]] = {k: [] for k in top_ks}
            with torch.inference_mode():
                found = {k: int((fns[k]().scores[0] > 0.01).sum()) for k in top_ks}
                for _ in range(repeats):
                    for k in top_ks:
                        timings[k].append(median_time(fns[k], repeats=1, warmup=0))
            base = statistics.median(timings[top_ks[0]])
            for k in top_ks:
                t = statistics.median(timings[k])
                rows.append([f"{people} ({people // 4})", f"{torch.sigmoid(torch.tensor(background)).item():.4f}", k,
                             batch, min(k, above), found[k], f"{t / batch * 1e3:.2f}", f"{t / base:.2f}"])
    return rows


def run_top_k(cfg: Config, size: int = 640, repeats: int | None = None,
              people: tuple[int, ...] = (10, 100)) -> list[Table]:
    """The validation top_k table (``python -m benchmarks --only topk``)."""
    repeats = repeats or (3 if cfg.quick else 7)
    set_threads(cfg.threads)
    notes: list[str] = []
    with load_note(notes):
        rows = top_k_rows(size, repeats, people, batches=(1,) if cfg.quick else (1, 8))
    return [Table(f"Validation post-processing vs top_k at {size}x{size}: decode + select_detections, conf 0.001 "
                  f"(CPU, {cfg.threads} thread(s), median of {repeats})", TOP_K_HEADER, rows,
                  ["People fire 27 candidates each (3 x 3 cells x 3 anchors); every 4th person is faint (best score "
                   "0.27). With top_k 1000 the faint people of a crowded image never reach NMS. Background 0.0025: "
                   "every prediction passes conf 0.001 (the worst case, an untrained model); 0.0003: only the "
                   "people's candidates do (closer to a trained model).", *notes])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 repeats (sizes unchanged)")
    a = p.parse_args(argv)
    repeats = 3 if a.quick else a.repeats
    cfg = Config(quick=a.quick, threads=a.threads)
    print(machine_line(cfg))
    for table in run_latency(cfg, a.size, repeats) + run_nms(cfg, a.size, max(repeats, 5)) + run_top_k(cfg, a.size):
        print_table(table)
    print(f"\nload average after: {load_average()} (other jobs on these {os.cpu_count()} cores inflate every figure)")


if __name__ == "__main__":
    main()
