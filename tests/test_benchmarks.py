"""Smoke test of the benchmark suite: every piece runs on tiny sizes and yields Markdown tables.

Times are never asserted (benchmarks print figures; tests check that they can be produced)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import checkpoint, data_pipeline, evaluation, inference, model, optimizer, run, train_step
from benchmarks.common import Config, Table

CFG = Config(quick=True, threads=1)
pytestmark = pytest.mark.slow  # runs every benchmark once, end to end


def _check(tables: list[Table], min_rows: int = 1) -> None:
    assert tables and all(isinstance(t, Table) for t in tables)
    for t in tables:
        assert len(t.rows) >= min_rows and all(len(r) == len(t.header) for r in t.rows), t.title
        md = t.markdown().splitlines()
        assert md[0].startswith("### ") and md[2].startswith("| ") and md[3].startswith("|---")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_model_and_inference_pieces() -> None:
    _check(model.run(CFG, size=64, repeats=1))
    _check(inference.run_latency(CFG, size=64, repeats=1))
    _check(inference.run_nms(CFG, size=64, repeats=1, people=(1,)), min_rows=2)   # two thresholds
    top_k = inference.run_top_k(CFG, size=128, repeats=1, people=(4,))
    _check(top_k, min_rows=4)                                  # top_k 1000 and 30000 x two backgrounds
    assert [r[5] for r in top_k[0].rows] == [4] * 4 and top_k[0].rows[0][-1] == "1.00"


def test_small_top_k_loses_the_faint_people_of_a_crowd() -> None:
    """The scene behind the top_k table: with 1000 candidates the faint quarter of 100 people is lost."""
    rows = inference.top_k_rows(640, 1, people_counts=(100,), batches=(1,))
    assert [(r[2], r[5]) for r in rows] == [(1000, 75), (30000, 100)] * 2


def test_training_step_and_memory_pieces() -> None:
    tables = train_step.run(CFG, configs=[("n", 64, 2)], repeats=1, warmup=0)
    _check(tables)
    step, loss = tables
    assert float(step.rows[0][4]) > 0 and len(loss.rows) == 2                       # img/s; typical + crowd
    _check(train_step.run_memory(CFG, configs=[("n", 64, 2)]))                      # a fresh subprocess


def test_optimizer_piece() -> None:
    table = optimizer.run(CFG, variants="n", repeats=1)
    _check(table, min_rows=3)                                 # AdamW, SGD, EMA
    assert all(float(r[-1]) > 0 for r in table[0].rows)


def test_optimizer_reference_ema_equals_model_ema() -> None:
    """The benchmark's per-tensor reference must do the same EMA steps as ``ModelEMA.update``."""
    from yolopose.ema import ModelEMA

    net = torch.nn.Linear(3, 1)
    ours, ref = ModelEMA(net, 0.9, 2.0), ModelEMA(net, 0.9, 2.0)
    for step in range(3):
        with torch.no_grad():
            net.weight.fill_(float(step + 1))
        ours.update(net)
        optimizer.loop_ema_update(ref, net)
        assert torch.allclose(ours.module.weight, ref.module.weight) and int(ref.updates) == step + 1


def test_data_and_evaluation_pieces() -> None:
    _check(data_pipeline.run(CFG, count=2, items=2, size=64, batch=2, repeats=1), min_rows=3)
    tables = evaluation.run(CFG, sizes=[10], dets=3, repeats=1)
    _check(tables, min_rows=4)
    assert {r[2] for r in tables[0].rows} >= {"CocoEvaluator.evaluate (ours)", "pycocotools keypoints only (floor)"}


def test_suite_runner_prints_header_tables_and_footer(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {name: [Table(f"{name} table", ["a", "b"], [[1, 2]])] for name in run.BENCHMARKS}
    monkeypatch.setattr(run, "benchmark", lambda name: (lambda cfg: [Table(**vars(t)) for t in fake[name]]))
    out: list[str] = []
    tables = run.run_suite(CFG, run.parse_only("train,eval"), out.append)
    assert [t.title for t in tables] == ["train table", "eval table"]
    text = "\n".join(out)
    assert "torch " in out[0] and "load average before" in out[0] and "quick mode" in out[0]
    assert "| 1 | 2 |" in text and "Load average after" in out[-1]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run.parse_only("train,bogus")


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--help"])
    assert exc.value.code == 0 and "--only" in capsys.readouterr().out


def test_checkpoint_write_piece() -> None:
    (table,) = checkpoint.run(CFG, variants="n", repeats=1)
    _check([table])
    assert float(table.rows[0][1]) > 1  # MB: weights, EMA and momentum of the n model
