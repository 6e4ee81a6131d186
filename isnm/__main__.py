"""Train one ISNM network from the shell: `python -m isnm [--config FILE.yaml] [--set KEY=VALUE ...]`."""
from __future__ import annotations

import argparse
import sys

from isnm.config import ConfigError, config_hash, default_config, flat, parse_config, to_dict, with_setting
from isnm.datafiles import DataError
from isnm.metrics import BETA, EPOCH, EPOCH_SECONDS, TEST_ACC, TRAIN_LOSS
from isnm.training import train


def config_file(path: str) -> dict:
    """A training config from a YAML file (a study run's config.yaml artifact is one); raises ConfigError."""
    import yaml  # only this command reads YAML; the library takes plain dicts

    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except OSError as exc:
        raise ConfigError("", f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"not YAML{where}: {getattr(exc, 'problem', None) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"holds {type(data).__name__}, expected a mapping of config keys")
    parse_config(data)
    return data


def main(argv: list[str] | None = None) -> int:
    keys = "\n".join(f"  {key}={value}" for key, value in flat(default_config()).items())
    parser = argparse.ArgumentParser(prog="python -m isnm", description="Train one ISNM network.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"config keys, with their defaults (what each does: docs/reference.md):\n{keys}")
    parser.add_argument("--config", metavar="FILE.yaml", help="start from this config (e.g. a run's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of --config, dotted keys, e.g. --set surrogate.schedule=fixed")
    args = parser.parse_args(argv)
    try:
        config = config_file(args.config) if args.config else {}
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        for item in args.set:
            config = with_setting(config, item)
        cfg = parse_config(config)
    except ConfigError as exc:
        print(f"error: --set {exc}", file=sys.stderr)
        return 2
    print(f"training {cfg.arch} on {cfg.dataset}, T={cfg.timesteps}, {cfg.epochs} epochs, "
          f"surrogate {cfg.surrogate.schedule}, reset {cfg.neuron.reset}; config_hash {config_hash(to_dict(cfg))}")

    def progress(metrics: dict, state: dict) -> None:
        done = metrics[EPOCH]
        bar = "#" * round(30 * done / cfg.epochs)
        print(f"\r[{bar:<30}] epoch {done}/{cfg.epochs}  loss {metrics[TRAIN_LOSS]:.4f}  "
              f"test_acc {metrics[TEST_ACC]:.4f}  beta {metrics[BETA]:.3f}  "
              f"{metrics[EPOCH_SECONDS]:.1f}s", end="" if done < cfg.epochs else "\n", flush=True)

    try:
        final = train(config, on_epoch=progress)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("final: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
