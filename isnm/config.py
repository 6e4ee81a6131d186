"""The training config's types, and the typed validation of plain-dict configs into dataclasses.

One small validator serves the training config here and the study file in `study.config`: every
rejection is a `ConfigError` naming the dotted key path, the bad value and what was expected, with
a close-match suggestion for misspelled keys. No torch here, so a study file is checked in a blink.
"""
from __future__ import annotations

import ast
import reprlib
import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

DATASETS = ("digits", "cifar10", "cifar100")
ARCHS = ("tiny", "vgg_small", "resnet18")
RESETS = ("hard", "soft")
ALPHA_RULES = ("paper", "unit_peak")
SURROGATES = ("tanh", "sigmoid", "arctan", "fast_sigmoid", "rectangular", "triangle")  # isnm.surrogate.SHAPES
SCHEDULE_SHAPES = ("loglinear", "linear", "cosine", "step")  # isnm.schedule.beta_at


class ConfigError(ValueError):
    """A user's config is wrong at `path` (dotted keys); `str()` is one line for the terminal."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


SHOWN_CHARS = 80  # a value quoted in an error: a study file's value can be megabytes (YAML aliases nest lists)
_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict, _short.maxstring, _short.maxother = 3, 6, 6, SHOWN_CHARS, SHOWN_CHARS


def shown(value: Any) -> str:
    """`repr(value)` for an error message, at most SHOWN_CHARS characters (with "..." where cut), in bounded time
    whatever the value's size."""
    text = _short.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def check(ok: bool, path: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(path, f"got {shown(value)}, expected {expected}")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_key_message(key: str, known: list[str]) -> str:
    """'unknown key ...', with the known key meant: a close spelling, or the dotted key it is the last part of
    ('reset' for 'neuron.reset')."""
    close = difflib.get_close_matches(key, known, n=1) or [k for k in known if k.endswith("." + key)][:1]
    hint = f"; did you mean {shown(close[0])}?" if close else ""
    return f"unknown key {shown(key)} (known: {', '.join(known)}){hint}"


def describe(tp: Any) -> str:
    """A readable name for a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        return "a list of values" if item is Any else f"a list of {describe(item)}"
    if origin is dict:
        return f"a mapping of {describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value")


def parse(tp: Any, value: Any, path: str = "") -> Any:
    """`value` (plain YAML/JSON data) checked against annotation `tp`, dataclasses built."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        check(value in typing.get_args(tp) and not isinstance(value, bool), path, value, describe(tp))
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            check(type(None) in args, path, value, describe(tp))
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more than "expected X"
            return parse(options[0], value, path)
        mappings = [a for a in options if dataclasses.is_dataclass(a) or typing.get_origin(a) is dict]
        if isinstance(value, dict) and len(mappings) == 1:  # the one option a mapping can be: its error says more
            return parse(mappings[0], value, path)
        for arg in options:
            try:
                return parse(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"got {shown(value)}, expected {describe(tp)}")
    if origin is list:
        one = "" if isinstance(value, (dict, type(None))) else f" (one value too: [{value}])"
        check(isinstance(value, list), path, value, describe(tp) + one)
        (item,) = typing.get_args(tp)
        return [parse(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), path, value, describe(tp))
        _, item = typing.get_args(tp)
        return {str(k): parse(item, v, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if tp is bool:
        check(isinstance(value, bool), path, value, describe(tp))
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), path, value, describe(tp))
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, describe(tp))
        return float(value)
    if tp is str:
        check(isinstance(value, str), path, value, describe(tp))
        return value
    raise TypeError(f"unsupported annotation {tp!r}")  # a bug in a schema, not a user error


def parse_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping; missing keys take defaults, unknown keys are errors.

    After construction the dataclass's own `check(path)` method, when it has one, validates ranges
    and cross-field rules with the same error shape.
    """
    check(isinstance(data, dict), path, data, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(join(path, str(key)), unknown_key_message(str(key), list(fields)))
    values = {}
    for name, spec in fields.items():
        if name in data:
            values[name] = parse(hints[name], data[name], join(path, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), f"missing, expected {describe(hints[name])}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf value}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = join(prefix, str(key))
        if isinstance(value, dict):
            out.update(flat(value, dotted))
        else:
            out[dotted] = value
    return out


def nested(dotted: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merged(base: dict, overlay: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in `overlay` replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def value_of(text: str) -> Any:
    """A command-line value: true/false, a number, a list, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def with_setting(config: dict, item: str) -> dict:
    """`config` with one command-line override KEY=VALUE (a dotted key; the value as `value_of` reads it)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(item, "expected KEY=VALUE")
    return merged(config, nested({key: value_of(text)}))


@dataclass
class NeuronConfig:
    tau: float = 2.0  # membrane decay is 1/tau
    threshold: float = 1.0
    reset: Literal[RESETS] = "hard"

    def check(self, path: str) -> None:
        check(self.tau > 0, join(path, "tau"), self.tau, "a number > 0")
        check(self.threshold > 0, join(path, "threshold"), self.threshold, "a number > 0")


@dataclass
class EpochBetas:
    """`schedule: {beta: [...]}`: beta given for each epoch, the first epoch's first. What a population-based search
    found (study.run resolves `{from_study: NAME}` into this list) replays as it is."""
    beta: list[float]

    def check(self, path: str) -> None:
        check(len(self.beta) > 0, join(path, "beta"), self.beta, "a beta for each epoch")
        for i, beta in enumerate(self.beta):
            check(beta > 0, join(path, f"beta[{i}]"), beta, "a number > 0")


@dataclass
class SurrogateConfig:
    # gradual = GSG, eq. 7; fixed = beta throughout; learned = a beta per spiking layer trained by gradient (from
    # beta_min, at its own learning rate beta_lr): a parameter, not a schedule (isnm.surrogate.surrogate_grads);
    # {beta: [...]}: one beta per epoch, given
    schedule: Union[Literal["gradual", "fixed", "learned"], EpochBetas] = "gradual"
    beta: float = 5.0  # the fixed schedule's beta
    beta_min: float = 0.5  # the gradual schedule's first-epoch beta ...
    beta_max: float = 5.0  # ... and last-epoch beta
    alpha: Union[Literal[ALPHA_RULES], float] = "paper"  # eq. 8, or another rule, or a constant
    function: Literal[SURROGATES] = "tanh"  # eq. 9's tanh, or another shape of the same peak and area
    shape: Literal[SCHEDULE_SHAPES] = "loglinear"  # the gradual schedule's curve: eq. 7's, or another
    update: Literal["epoch", "step"] = "epoch"  # a new beta every epoch (the paper), or every optimizer step
    beta_lr: float = 0.01  # the learned beta's learning rate (Adam, on log beta, no weight decay)

    def check(self, path: str) -> None:
        check(self.beta > 0, join(path, "beta"), self.beta, "a number > 0")
        check(self.beta_min > 0, join(path, "beta_min"), self.beta_min, "a number > 0")
        check(self.beta_max >= self.beta_min, join(path, "beta_max"), self.beta_max,
              f"a number >= beta_min ({self.beta_min})")
        check(self.beta_lr > 0, join(path, "beta_lr"), self.beta_lr, "a number > 0")
        if not isinstance(self.alpha, str):
            check(self.alpha > 0, join(path, "alpha"), self.alpha, f"one of {ALPHA_RULES} or a number > 0")


@dataclass
class TrainConfig:
    # The paper's recipe (section 3.1): Adam, lr 1e-3, weight decay 1e-4, cross-entropy.
    # Data set, architecture and length default to the embedded digits demo.
    dataset: str = "digits"  # digits, cifar10, cifar100, a name a package registers, or module:callable
    dataset_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments to your data set's callable
    data_dir: str = "./data"
    download: bool = False
    arch: str = "tiny"  # tiny, vgg_small, resnet18, a name a package registers, or module:callable
    arch_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments to your network's callable
    width: float = 1.0  # every layer's channels times this (1 = the paper's networks; < 1 for a quick look on a CPU)
    timesteps: int = 5
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # fraction of the training set held out (the same images for every run) for val_acc, on which
    # searches, ASHA and `study.report --stat best` choose; 0 trains on all of it, as the paper does
    validation: float = 0.1
    # training images (unaugmented, the first of the training set) run through the network in training mode
    # before each evaluation, to set batch norm's running statistics to the current weights' (a cumulative
    # average, "precise BN"). Running averages lag the weights; while they still move fast (few steps an
    # epoch, as on digits), the lag costs a deep spiking network up to 90 points of test accuracy
    # (docs/model.md, "Batch-norm statistics"). 0 keeps nn.BatchNorm2d's running averages, as the paper does.
    bn_recalibration: int = 2048
    device: str = "auto"  # auto = CUDA when present, else CPU
    kernel: Literal["auto", "eager", "compiled"] = "auto"  # the ISNM loops and fused BN-ISNM; auto = compiled
    # where it pays for itself: on GPUs, and on the CPU when the epochs save more than a compile costs (measured per
    # architecture, isnm/kernels.py: VGG-small compiles in about 170 s on 2 cores, then saves 0.4 s of a 1.5 s
    # quarter-width digits epoch, so such a trial compiles from 401 epochs on, a CIFAR one always), eager otherwise
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (on the CPU too); potentials stay float32
    # the layout of images and conv weights; auto = channels_last on CUDA (tensor cores' layout, no transposes
    # around cuDNN's convolutions), contiguous on the CPU (oneDNN picks its own layout inside each call)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    # SpikeConv2d's backward: in chunks of samples (the CPU's, whose cache holds a chunk) or in one call
    # (CUDA's); auto picks by device. Results agree to rounding: tests/test_conv.py
    conv_backward: Literal["auto", "chunked", "whole"] = "auto"
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    arch_source: str = ""  # hashed: edited code trains again, and a trial refuses code of another digest
    dataset_source: str = ""  # as arch_source

    def check(self, path: str) -> None:
        check_plugin_name("arch", self.arch, ARCHS, path)
        check_plugin_name("dataset", self.dataset, DATASETS, path)
        for key in ("arch", "dataset"):
            if getattr(self, f"{key}_args"):
                check(getattr(self, key) not in (ARCHS if key == "arch" else DATASETS), join(path, f"{key}_args"),
                      getattr(self, f"{key}_args"), f"nothing for the built-in {key} {getattr(self, key)!r} "
                                                    f"(only your own code takes {key}_args)")
        for key in ("timesteps", "epochs", "batch_size"):
            check(getattr(self, key) >= 1, join(path, key), getattr(self, key), "an integer >= 1")
        check(self.lr > 0, join(path, "lr"), self.lr, "a number > 0")
        check(self.width > 0, join(path, "width"), self.width, "a number > 0")
        check(self.weight_decay >= 0, join(path, "weight_decay"), self.weight_decay, "a number >= 0")
        check(0 <= self.validation < 1, join(path, "validation"), self.validation, "a fraction >= 0 and < 1")
        check(self.bn_recalibration >= 0, join(path, "bn_recalibration"), self.bn_recalibration, "an integer >= 0")
        check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), join(path, "device"),
              self.device, "'auto', 'cpu' or 'cuda[:N]'")
        if isinstance(self.surrogate.schedule, EpochBetas):
            check(len(self.surrogate.schedule.beta) == self.epochs, join(path, "surrogate.schedule.beta"),
                  self.surrogate.schedule.beta, f"one beta for each of the {self.epochs} epochs "
                                                f"(got {len(self.surrogate.schedule.beta)})")


def check_plugin_name(key: str, name: str, built_in: tuple[str, ...], path: str) -> None:
    """ConfigError unless `name` is built in, registered by an installed package, or module:callable."""
    from isnm.plugins import REFERENCE, GROUPS, is_reference, registered

    if name in built_in:
        return
    if is_reference(name):
        check(bool(REFERENCE.match(name)), join(path, key), name, "module:callable, e.g. my_nets:spiking_mlp")
        return
    check(name in registered(key), join(path, key), name,
          f"{' or '.join(repr(b) for b in built_in)}, a name an installed package registers ({GROUPS[key]}), or your "
          f"own code as module:callable")


def parse_config(config: dict, path: str = "") -> TrainConfig:
    """A validated TrainConfig from plain data; raises ConfigError naming the bad key."""
    return parse_dataclass(TrainConfig, config, path)


def default_config() -> dict:
    return to_dict(TrainConfig())


# The dotted keys a config may set: the default config's, and those of a schedule given as a mapping
CONFIG_KEYS = (*flat(default_config()), "surrogate.schedule.beta")


# Where the data lives and whether it may be fetched do not change a result, so they are not hashed.
UNHASHED_KEYS = ("data_dir", "download")


# Options added after runs were hashed, left out of the hash at the default that computes what runs made
# before them computed: a new option must not turn every finished run into a stranger (not cached, not
# found by the report). Every option added from now on goes here with that default.
HASHED_WHEN_SET = {"surrogate.function": "tanh", "surrogate.shape": "loglinear", "surrogate.update": "epoch",
                   "memory_format": "auto", "conv_backward": "auto", "surrogate.beta_lr": 0.01,
                   "arch_source": "", "dataset_source": ""}


def config_hash(config: dict) -> str:
    """12 hex digits identifying what a training run computes, stable across files and machines."""
    payload = {k: v for k, v in flat(config).items()
               if k not in UNHASHED_KEYS and HASHED_WHEN_SET.get(k, object()) != v}
    text = json.dumps(nested(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
