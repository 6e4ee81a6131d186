"""The surrogate gradients' closed forms, written by hand: what tests/test_surrogate.py and tests/test_neuron.py
hold the library's backward passes to."""
import math


def logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# README's table, g(x) in scalar math, written apart from isnm.surrogate's tensor code
BY_HAND = {
    "tanh": lambda x: 1.0 - math.tanh(x) ** 2,
    "sigmoid": lambda x: 4.0 * logistic(2.0 * x) * (1.0 - logistic(2.0 * x)),
    "arctan": lambda x: 1.0 / (1.0 + (math.pi * x / 2.0) ** 2),
    "fast_sigmoid": lambda x: 1.0 / (1.0 + abs(x)) ** 2,
    "rectangular": lambda x: 1.0 if abs(x) < 1.0 else 0.0,
    "triangle": lambda x: max(0.0, 1.0 - abs(x) / 2.0),
}
