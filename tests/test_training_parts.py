"""EMA, parameter groups and the LR schedule."""
import pytest
import torch

from yolopose import YOLOPose
from yolopose.ema import ModelEMA
from yolopose.optim import WarmupSchedule, build_optimizer, parameter_groups


def test_ema_moves_towards_model_and_ramps_up() -> None:
    model = torch.nn.Linear(3, 1)
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    w0 = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d1 = ema.current_decay()
    assert 0 < d1 < 0.9
    assert torch.allclose(ema.module.weight, d1 * w0 + (1 - d1) * torch.ones(1, 3))
    assert not ema.module.weight.requires_grad
    before = ema.module.weight.clone()
    for _ in range(50):
        ema.update(model)
    assert (ema.module.weight - 1).abs().max() < (before - 1).abs().max()
    assert int(ema.updates) == 51 and ema.current_decay() == pytest.approx(0.9, rel=1e-6)
    assert "updates" in ema.state_dict() and not ema.train().training


def test_ema_update_count_follows_a_loaded_state_dict() -> None:
    """The decay reads a host copy of ``updates``; loading a checkpoint must replace it, both ways."""
    model = torch.nn.Linear(3, 1)
    trained = ModelEMA(model, decay=0.9, tau=10.0)
    for _ in range(30):
        trained.update(model)
    fresh = ModelEMA(model, decay=0.9, tau=10.0)
    fresh.update(model)                                   # caches a count of 1
    fresh.load_state_dict(trained.state_dict())
    assert fresh.current_decay() == pytest.approx(trained.current_decay())
    fresh.update(model)
    assert int(fresh.updates) == 31
    fresh.load_state_dict(ModelEMA(model, decay=0.9, tau=10.0).state_dict())   # back to 0 updates
    assert fresh.current_decay() == 0.0 and int(fresh.updates) == 0


def test_ema_update_equals_a_lerp_per_state_tensor_with_batchnorm() -> None:
    """The multi-tensor update is the plain EMA of every float parameter and buffer (BatchNorm running
    statistics included) and copies integer buffers (``num_batches_tracked``)."""
    torch.manual_seed(0)
    model = YOLOPose("n", num_keypoints=3)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    model.train()
    for _ in range(2):
        model(torch.rand(2, 3, 64, 64))                   # moves BatchNorm statistics and counters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        expected = {}
        d = 0.9 * (1 - torch.exp(torch.tensor(-(int(ema.updates) + 1) / 2.0))).item()
        for name, value in ema.module.state_dict().items():
            new = model.state_dict()[name]
            expected[name] = value * d + new * (1 - d) if value.is_floating_point() else new.clone()
        ema.update(model)
        got = ema.module.state_dict()
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert torch.allclose(got[name], value, atol=1e-6), name
    counts = [v for k, v in ema.module.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and all(int(c) == 2 for c in counts)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_build_optimizer_fused_where_available_and_same_steps(name: str) -> None:
    torch.manual_seed(0)
    a, b = YOLOPose("n", num_keypoints=3), YOLOPose("n", num_keypoints=3)
    b.load_state_dict(a.state_dict())
    ours = build_optimizer(name, parameter_groups(a, 1e-3), 0.01, 0.9, True)
    ref_cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    ref_kw = {"betas": (0.9, 0.999)} if name == "adamw" else {"momentum": 0.9, "nesterov": True}
    ref = ref_cls(parameter_groups(b, 1e-3), lr=0.01, foreach=False, **ref_kw)
    assert type(ours) is ref_cls
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4):
        assert ours.defaults["fused"]                     # torch has CPU fused AdamW/SGD since 2.4
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("adam", parameter_groups(a, 0.0), 0.01, 0.9, True)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_is_chosen_only_where_its_step_runs(name: str) -> None:
    """torch accepts ``fused=True`` for any device and refuses an unsupported one at the first ``step()``."""
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))   # a device without fused kernels
    p.grad = torch.ones_like(p)
    opt = build_optimizer(name, [{"params": [p]}], 0.01, 0.9, True)
    assert not opt.defaults.get("fused")
    opt.step()                                                # the fused optimiser raised RuntimeError here
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(name, [{"params": cpu}], 0.01, 0.9, True).defaults["fused"]
    assert not build_optimizer(name, [{"params": cpu}], 0.01, 0.9, True, allow_fused=False).defaults.get("fused")


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = YOLOPose("n", num_keypoints=3)
    groups = parameter_groups(model, 5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decay, norm, bias = groups
    assert decay["weight_decay"] == 5e-4 and norm["weight_decay"] == 0 and bias["weight_decay"] == 0
    assert all(p.ndim == 4 for p in decay["params"]) and all(p.ndim == 1 for p in norm["params"] + bias["params"])
    assert bias["is_bias"] and not decay["is_bias"]


def test_schedule_warmup_then_cosine() -> None:
    s = WarmupSchedule(lr=0.01, lr_final=0.1, total_steps=1000, warmup_steps=100, momentum=0.937,
                       warmup_momentum=0.8, warmup_bias_lr=0.1)
    assert s.at(0, False) == (0.0, 0.8)
    assert s.at(0, True)[0] == pytest.approx(0.1)
    assert s.at(50, True)[0] < 0.1 and s.at(50, False)[0] > 0
    lr100, m100 = s.at(100, False)
    assert lr100 == pytest.approx(0.01 * s.decay_factor(100)) and m100 == 0.937
    assert s.at(1000, False)[0] == pytest.approx(0.001)
    lrs = [s.at(t, False)[0] for t in range(100, 1001, 50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    lin = WarmupSchedule(0.01, 0.1, 1000, 0, 0.9, 0.8, 0.1, kind="linear")
    assert lin.at(500, False)[0] == pytest.approx(0.01 * 0.55)


def test_schedule_drives_adamw_first_beta_like_sgd_momentum() -> None:
    model = torch.nn.Linear(3, 1)
    s = WarmupSchedule(lr=0.002, lr_final=0.1, total_steps=100, warmup_steps=10, momentum=0.937,
                       warmup_momentum=0.8, warmup_bias_lr=0.0)
    adamw = torch.optim.AdamW(parameter_groups(model, 1e-4), lr=0.002, betas=(0.937, 0.999))
    s.apply(adamw, 0)
    assert all(g["betas"] == (0.8, 0.999) and g["lr"] == 0.0 for g in adamw.param_groups)
    s.apply(adamw, 50)
    assert all(g["betas"] == (0.937, 0.999) for g in adamw.param_groups)
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.002 * s.decay_factor(50))


def test_module_builds_the_configured_optimizer() -> None:
    from types import SimpleNamespace

    from yolopose.module import PoseModule

    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        module = PoseModule(variant="n", width=0.125, num_keypoints=3, optimizer=name)
        trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=8), accumulate_grad_batches=1,
                                  estimated_stepping_batches=100, max_epochs=10, train_dataloader=[],
                                  num_training_batches=10)
        module.trainer = trainer  # type: ignore[assignment]
        opt = module.configure_optimizers()
        assert type(opt) is cls
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(5e-4 * 8 / 64)
        bias_start = module.schedule.at(0, is_bias=True)[0]
        assert bias_start == (pytest.approx(0.1) if name == "sgd" else 0.0)
