import math

import pytest
import torch
from torch import nn

from wcl.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine


def test_param_groups_exclude_biases_and_norms():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, no_decay = param_groups({"net": net}, weight_decay=0.1)
    assert len(decay["params"]) == 1 and decay["params"][0] is net[0].weight
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]


def test_lars_trust_ratio_and_exclusion():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": 0.0},
                {"params": [b], "lars_exclude": True, "weight_decay": 0.0}], lr=1.0, momentum=0.0, eta=0.01)
    w.grad = torch.tensor([0.0, 10.0])  # ‖g‖ = 10 → trust = 0.01·5/10 = 0.005
    b.grad = torch.tensor([2.0])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0 - 0.05]))
    torch.testing.assert_close(b.detach(), torch.tensor([-1.0]))  # plain SGD step


def test_lars_weight_decay_enters_trust_ratio():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=1.0, eta=1.0)
    w.grad = torch.zeros(2)
    opt.step()  # d = wd·w; trust = ‖w‖/‖d‖ = 1 → w - w = 0
    torch.testing.assert_close(w.detach(), torch.zeros(2))


def test_scaled_lr():
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.1, 999, "none") == 0.1
    with pytest.raises(ValueError):
        scaled_lr(0.1, 256, "cubic")


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_factor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(40, 0, 80) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize("name,cls", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    net = nn.Linear(3, 2)
    assert isinstance(build_optimizer(name, param_groups({"n": net}, 1e-4), 0.1, 0.9, 1e-4), cls)


def test_lars_clip_caps_each_layers_step_at_the_learning_rate():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    v = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([{"params": [w, v], "lars_exclude": False, "weight_decay": 0.0}], lr=0.1, momentum=0.0, eta=0.02,
               clip=True)
    w.grad = torch.tensor([0.0, 0.5])  # trust = 0.02·5/0.5 = 0.2 > lr: the factor is min(0.2 / 0.1, 1) = 1
    v.grad = torch.tensor([0.0, 10.0])  # trust = 0.01 < lr: the factor is 0.1, the step lr·0.1·g
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0 - 0.1 * 0.5]))
    torch.testing.assert_close(v.detach(), torch.tensor([3.0, 4.0 - 0.1 * 0.1 * 10.0]))


def test_exclusion_of_biases_and_norms_can_be_turned_off():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, excluded = param_groups({"net": net}, weight_decay=0.1, exclude_bias_norm=False)
    assert len(decay["params"]) == 4 and not excluded["params"]


def _run(sched_args: tuple, steps: range, state: tuple | None = None) -> tuple[list[float], tuple]:
    from wcl.optim import WarmupCosineLR

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, *sched_args)
    if state is not None:
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
    lrs = []
    for _ in steps:
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, (opt.state_dict(), sched.state_dict())


def test_warmup_cosine_scheduler_keeps_its_planned_length_on_another_world_size():
    """10 steps an epoch for 4 epochs, stopped at step 20; resumed with 5 steps an epoch (twice the processes): the
    remaining 2 epochs are 10 steps, and the curve goes on from half way to its end over them."""
    straight, _ = _run((10, 40, 10), range(40))
    assert straight == pytest.approx([warmup_cosine(s, 10, 40) for s in range(40)])
    first, state = _run((10, 40, 10), range(20))
    resumed, _ = _run((5, 20, 5), range(20, 30), state)
    assert first == straight[:20]
    assert resumed == pytest.approx([straight[20 + 2 * i] for i in range(10)])  # one step now counts for two
    assert resumed[-1] > 0 and min(resumed) == resumed[-1]
    # Another length asked for (max_epochs 4 -> 6 at 10 steps an epoch): the new length's curve from the same step.
    longer, _ = _run((10, 60, 10), range(20, 22), state)
    assert longer[1] == pytest.approx(warmup_cosine(21, 10, 60))
    # A checkpoint whose scheduler state is a LambdaLR's resumes on the plain curve.
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 10, 40))
    for _ in range(20):
        opt.step()
        old.step()
    again, _ = _run((10, 40, 10), range(20, 25), (opt.state_dict(), old.state_dict()))
    assert again == pytest.approx(straight[20:25])
