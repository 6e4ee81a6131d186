import pytest
import torch
from torch import nn

from isnm.neuron import ISNM, set_surrogate


def reference_spikes(current: list[float], tau: float, theta: float, reset: str) -> list[float]:
    """DESIGN.md's equations, one scalar neuron, step by step."""
    u, s, out = 0.0, 0.0, []
    for i in current:
        u = u / tau * (1 - s) + i if reset == "hard" else u / tau - theta * s + i
        s = 1.0 if u - theta >= 0 else 0.0
        out.append(s)
    return out


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("tau, theta", [(2.0, 1.0), (1.5, 0.7), (4.0, 0.3)])
def test_dynamics_match_the_step_by_step_reference(reset, tau, theta):
    current = torch.rand(12, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    spikes = ISNM(tau, theta, reset)(current)
    assert spikes.shape == current.shape
    for b in range(3):
        for n in range(4):
            assert spikes[:, b, n].tolist() == reference_spikes(current[:, b, n].tolist(), tau, theta, reset)


def test_soft_reset_keeps_the_residue_that_hard_reset_drops():
    current = torch.tensor([[3.0], [0.0], [0.0]], dtype=torch.float64)
    # tau = 1: hard u = 3 (fire), 0, 0; soft u = 3 (fire), 3 - 1 = 2 (fire), 2 - 1 = 1 (fire)
    assert ISNM(1.0, 1.0, "hard")(current).flatten().tolist() == [1, 0, 0]
    assert ISNM(1.0, 1.0, "soft")(current).flatten().tolist() == [1, 1, 1]


def test_state_starts_at_zero_on_every_call():
    neuron = ISNM()
    current = torch.rand(5, 2, 3)
    assert torch.equal(neuron(current), neuron(current))


def test_gradient_flows_through_time():
    current = torch.rand(5, 2, 3, requires_grad=True)
    ISNM()(current).sum().backward()
    assert current.grad is not None and current.grad.abs().sum() > 0


def test_set_surrogate_reaches_every_neuron():
    model = nn.Sequential(ISNM(), nn.Sequential(nn.Identity(), ISNM()))
    set_surrogate(model, 0.5, 7.0)
    assert [(m.alpha, m.beta) for m in model.modules() if isinstance(m, ISNM)] == [(0.5, 7.0)] * 2


@pytest.mark.parametrize("kwargs, message", [({"tau": 0.0}, "tau"), ({"threshold": -1.0}, "threshold"),
                                             ({"reset": "medium"}, "reset")])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ISNM(**kwargs)


def test_input_without_time_axis_is_rejected():
    with pytest.raises(ValueError, match=r"\[T, B, ...\]"):
        ISNM()(torch.rand(7))
