import math

import pytest
import torch

from cxrmodel.network import CXRNet
from cxrmodel.optimizers import make_optimizers
from cxrmodel.schedules import H_SCHEDULES, HSchedule


@pytest.mark.parametrize(
    "schedule, progress, expected",
    [
        (HSchedule("constant", 0.3, 0.3), 0.7, 0.3),
        (HSchedule("linear", 0.4, 0.1), 0.5, 0.25),
        (HSchedule("linear", 0.4, 0.1), 1.0, 0.1),
        (HSchedule("cosine", 0.4, 0.1), 0.5, 0.25),
        # 0.1 + 0.3 * 0.5 * (1 + cos(pi/4)) = 0.3560660
        (HSchedule("cosine", 0.4, 0.1), 0.25, 0.1 + 0.15 * (1 + math.cos(math.pi / 4))),
        (HSchedule("exponential", 0.4, 0.1), 0.5, 0.2),  # 0.4 * (0.1/0.4)^0.5
        (HSchedule("step", 0.4, 0.1, steps=4), 0.3, 0.3),  # plateau 1 of 0..3: 0.4 - 0.3/3
        (HSchedule("step", 0.4, 0.1, steps=4), 1.0, 0.1),
        (HSchedule("linear", 0.4, 0.1), 2.0, 0.1),  # clamped
    ],
)
def test_h_values(schedule, progress, expected):
    assert schedule(progress) == pytest.approx(expected)


@pytest.mark.parametrize("name", [n for n in H_SCHEDULES if n != "constant"])
def test_every_schedule_decreases_from_start_to_end(name):
    s = HSchedule(name, 0.45, 0.05)
    values = [s(i / 20) for i in range(21)]
    assert values[0] == pytest.approx(0.45) and values[-1] == pytest.approx(0.05)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "sigmoid"}, "unknown H schedule 'sigmoid'; allowed: constant, linear, cosine, exponential, step"),
        ({"start": 0.6}, r"start=0.6 must be within \[0, 0.5\]"),
        ({"start": 0.2, "end": 0.3}, r"end=0.3 must be within \[0, start=0.2\]"),
        ({"name": "exponential", "end": 0.0}, "needs end > 0"),
        ({"name": "step", "steps": 0}, "steps=0"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HSchedule(**kwargs)


def test_paper_lr_steps_and_fixed_discriminator_lr():
    model = CXRNet(4, [0, 1], 2, branch_features=8, discriminator_hidden=8)
    adam, rmsprop, schedule = make_optimizers(model)
    lrs = []
    for _ in range(8):
        lrs.append(adam.param_groups[0]["lr"])
        adam.step()  # (no gradients: a no-op) the epoch's steps come before the LR step
        schedule.step()  # once per epoch
    assert lrs == pytest.approx([1e-4] * 3 + [1e-5] * 3 + [1e-6] * 2)
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.param_groups[0]["lr"] == 1e-4
    adam_params = {id(p) for g in adam.param_groups for p in g["params"]}
    disc_params = {id(p) for g in rmsprop.param_groups for p in g["params"]}
    assert adam_params.isdisjoint(disc_params)
    assert len(adam_params) + len(disc_params) == len(list(model.parameters()))
