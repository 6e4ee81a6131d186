"""A corpus of study files for the checks of a study file, run both in-process (tests/test_config.py) and at the
command line (tests/test_run_errors.py): GOOD, a valid one, and BAD, the mistakes a user makes, each with the
words its one-line error holds."""
import copy
from pathlib import Path

from isnm.config import merged, nested

GOOD = {"name": "t", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
        "variants": {"A": {}, "B": {"neuron.reset": "soft"}}, "seeds": [0, 1], "resources": {"cpu": 1}}


def shipped_pbt_schedule(name: str, profile) -> list[float]:
    """A stand-in for what `{from_study: NAME}` is in a store where shipped PBT study NAME ran with `profile`: a beta
    per epoch (study.tracking.pbt reads the real one)."""
    from study.design.load import load_study

    return [1.0] * load_study(Path(__file__).resolve().parent.parent / "search_spaces" / f"{name}.yaml",
                              profile).base["epochs"]


def with_change(**changes) -> dict:
    """GOOD with `changes`: top=v replaces a top-level key, top__a__b=v sets one key inside it."""
    data = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        top, *rest = dotted.split("__")
        data[top] = merged(data.get(top, {}), nested({".".join(rest): value})) if rest else value
    return data


# (id, the study file: a mapping or YAML text, or "PROFILE" for GOOD run with a profile it lacks ("fast"), a regular
# expression its one-line error matches)
GOOD_TEXT = ("name: t\nbase: {dataset: digits, arch: tiny, epochs: 2}\nseeds: [0, 1]\nresources: {cpu: 1}\n"
             "variants:\n  A: {}\n")

BAD = [
    ("yaml", "name: t\nbase: {dataset: digits\n", "YAML error at line 3"),
    ("yaml with its line", "name: t\nbase:\n  epochs: 2\n   arch: tiny\n",
     "YAML error at line 4, column 8: 'arch: tiny': mapping values are not allowed here"),
    ("key twice", "name: t\nseeds: [0]\nname: u\n",
     "YAML error at line 3, column 1: 'name: u': key 'name' appears twice in one mapping"),
    ("key twice inside", "name: t\nbase: {dataset: digits, epochs: 2, epochs: 3}\n", "key 'epochs' appears twice"),
    ("unknown top key", with_change(seed=[0]), "seed: unknown key 'seed'.*did you mean 'seeds'"),
    ("unknown config key", with_change(base__epocs=3), "base.epocs: unknown key 'epocs'.*did you mean 'epochs'"),
    ("wrong type", with_change(base__epochs="ten"), "base.epochs: got 'ten', expected an integer"),
    ("epochs < 1", with_change(base__epochs=0), "base.epochs: got 0, expected an integer >= 1"),
    ("timesteps < 1", with_change(variants={"A": {"timesteps": 0}}), "variants.A.timesteps: got 0"),
    ("beta_min <= 0", with_change(base__surrogate={"beta_min": 0}), "base.surrogate.beta_min: got 0"),
    ("beta_min > beta_max", with_change(variants={"G": {"surrogate.beta_min": 9.0}}),
     "variants.G.surrogate.beta_max: got 5.0, expected a number >= beta_min"),
    ("tau <= 0", with_change(variants={"A": {"neuron.tau": -1}}), "variants.A.neuron.tau: got -1"),
    ("threshold <= 0", with_change(base__neuron={"threshold": 0}), "base.neuron.threshold: got 0"),
    ("reset", with_change(variants={"A": {"neuron.reset": "medium"}}),
     "variants.A.neuron.reset: got 'medium', expected 'hard' or 'soft'"),
    ("dataset", with_change(base__dataset="mnist"), "base.dataset: got 'mnist', expected 'digits'"),
    ("arch", with_change(base__arch="vgg16"), "base.arch: got 'vgg16', expected 'tiny' or 'vgg_small'"),
    ("override key missing", with_change(variants={"A": {"neuron.rest": "soft"}}),
     "variants.A.neuron.rest: unknown key.*did you mean 'neuron.reset'"),
    ("seed set by variant", with_change(variants={"A": {"seed": 3}}), "variants.A.seed: seeds are set by"),
    ("grid key", with_change(grid={"timestep": [1, 5]}), "grid.timestep: unknown key.*'timesteps'"),
    ("grid value", with_change(grid={"timesteps": [1, 0]}), r"grid.timesteps\[1\]: got 0"),
    ("grid value not a list", with_change(grid={"neuron.tau": 1.5}),
     r"grid.neuron.tau: got 1.5, expected a list of values \(one value too: \[1.5\]\)"),
    ("profile without base", with_change(profiles={"quick": {"epochs": 1}}),
     r"profiles.quick.epochs: a profile overlays the study's keys.*put it under base: \(profiles.quick.base.epochs\)"),
    ("profile key", with_change(profiles={"quick": {"seedz": [1]}}), "profiles.quick.seedz: unknown key.*'seeds'"),
    ("table key without its section", with_change(table={"columns": ["reset"]}),
     "table.columns: unknown key 'reset'.*did you mean 'neuron.reset'"),
    ("compare columns without columns", with_change(table={"compare": "columns"}),
     "table.compare: got 'columns', expected 'rows' for a table without columns"),
    ("compare value", with_change(table={"compare": "diagonal"}),
     "table.compare: got 'diagonal', expected 'columns' or 'rows' or 'both'"),
    ("arch_source set by hand", with_change(variants={"A": {"arch_source": "0123"}}),
     "variants.A.arch_source: study.run sets it"),
    ("table key not varied", with_change(table={"rows": "neuron.tau"}),
     "table.rows: 'neuron.tau' is not varied by this study .*the keys it varies: variant, neuron.reset"),
    ("table columns empty", with_change(table={"columns": []}), r"table.columns: got \[\], expected the keys to lay out"),
    ("table key twice", with_change(table={"rows": "variant", "columns": ["variant"]}),
     "table.columns: 'variant' is already in table.rows"),
    ("seeds empty", with_change(seeds=[]), "seeds: got \\[\\], expected a non-empty list"),
    ("seeds duplicated", with_change(seeds=[0, 1, 0]), r"seeds\[2\]: got 0, expected a seed not listed before"),
    ("negative cpu", with_change(resources={"cpu": -1}), "resources.cpu: got -1"),
    ("non-numeric gpu", with_change(resources={"gpu": "lots"}), "resources.gpu: got 'lots', expected a number"),
    ("unknown profile", "PROFILE", "profiles: no profile 'fast'"),
    ("empty file", "", "the file is empty"),
    ("not a mapping", "- a\n- b\n", "expected a mapping"),
    ("search with variants", with_change(search={"space": {"lr": {"loguniform": [1e-4, 1e-2]}}}),
     "search: .*either a search or variants/grid"),
    ("two metrics, one mode", {**GOOD, "variants": {}, "search": {
        "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "metric": ["val_acc", "val_energy"], "mode": "max"}},
     r"search.metric: got \['val_acc', 'val_energy'\], expected two different metrics with two modes"),
    ("two metrics at random", {**GOOD, "variants": {}, "search": {
        "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "algorithm": "random", "metric": ["val_acc", "val_energy"],
        "mode": ["max", "min"]}}, "search.algorithm: got 'random', expected optuna for two metrics"),
    ("two metrics with asha", {**GOOD, "variants": {}, "search": {
        "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "metric": ["val_acc", "val_energy"], "mode": ["max", "min"],
        "scheduler": {"asha": {"grace_period": 1}}}}, "search.scheduler: .*no scheduler with two metrics"),
    ("test energy selected", {**GOOD, "variants": {}, "search": {
        "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "metric": ["val_acc", "energy"], "mode": ["max", "min"]}},
     r"search.metric: got \['val_acc', 'energy'\], expected 'train_loss' or .* or a list of"),
    ("bad distribution", {**GOOD, "variants": {}, "search": {"space": {"lr": {"lognormal": [1, 2]}}}},
     r"search.space.lr: got .*, expected one of \{loguniform"),
    ("loguniform low", {**GOOD, "variants": {}, "search": {"space": {"lr": {"loguniform": [0, 1]}}}},
     "search.space.lr.loguniform: got \\[0, 1\\], expected \\[low, high\\] with 0 < low"),
    ("same config twice", with_change(variants={"A": {}, "B": {"neuron.reset": "hard"}}),
     "trials 'A seed=0' and 'B seed=0' have the same config"),
    ("search ranked on the test set", {**GOOD, "variants": {}, "search": {"metric": "test_acc",
                                                                         "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
     "search.metric: got 'test_acc', expected 'train_loss' or 'train_acc' or 'val_acc'"),
    ("search ranked on the test pass's firing", {**GOOD, "variants": {}, "search": {
        "metric": "spike_rate", "mode": "min", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
     "search.metric: got 'spike_rate', expected 'train_loss' or 'train_acc' or 'val_acc' or 'val_spike_rate'"),
    ("search on val_spike_rate without validation", {**GOOD, "variants": {}, "base": {**GOOD["base"], "validation": 0},
                                                     "search": {"metric": "val_spike_rate", "mode": "min",
                                                                "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
     "search.metric: val_spike_rate needs a validation split, but base.validation is 0"),
    ("search on val_acc without validation", {**GOOD, "variants": {}, "base": {**GOOD["base"], "validation": 0},
                                              "search": {"space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
     "search.metric: val_acc needs a validation split, but base.validation is 0"),
    ("validation 1", with_change(base__validation=1.0), "base.validation: got 1.0, expected a fraction >= 0 and < 1"),
    # names become folders (ray_results/<name>-<profile>-..., mlartifacts/<name>) and MLflow filter values
    ("name ..", with_change(name=".."), "name: got '..', expected 1 to 100 letters"),
    ("name with a quote", with_change(name="it's"), "name: got \"it's\", expected 1 to 100 letters"),
    ("name with a slash", with_change(name="a/b"), "name: got 'a/b'"),
    ("name too long", with_change(name="n" * 241), "name: got 'nnn.*', expected 1 to 100 letters"),
    # variant names label table rows, run names and the parent's metrics (MLflow takes 250 characters)
    ("variant name too long", with_change(variants={"A" * 65: {}}), r"variants: got 'AAA.*', expected a variant name of 1 to 64"),
    ("variant name with a line break", with_change(variants={"ISNM\nGSG": {}}), r"variants: got 'ISNM\\nGSG', expected a variant name"),
    ("variant name with a space at its end", with_change(variants={"ISNM ": {}}), "variants: got 'ISNM ', expected"),
    ("profile escapes storage", with_change(profiles={"../up": {"seeds": [1]}}),
     "profiles: got '../up', expected a profile name of 1 to 100 letters"),
    ("a value quoted short", GOOD_TEXT + "  C: {lr: &c [&b [&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], *a, *a, *a, *a, *a, *a, *a, *a, *a],"
     " *b, *b, *b, *b, *b, *b, *b, *b, *b]}\n",
     r"variants\.C\.lr: got \[\[\[1, 1, 1, 1, 1, 1, \.\.\.\], \[1, 1, 1, 1, 1, 1, \.\.\.\], .*\.\.\., expected a number$"),
    ("an alias bomb", "name: t\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 10)}]\n"
                                            for i in range(9)),
     r"more than 100,000 values \(seeds, grid values, each YAML alias \*name counted as expanded\)"),
    ("100,000 seeds", with_change(seeds=list(range(100_001))),
     r"more than 100,000 values \(seeds, grid values, each YAML alias \*name counted as expanded\)"),
    ("nested 600 deep", "name: t\nbase: " + "[" * 600 + "]" * 600 + "\n", "values nested more than 64 deep"),
    ("nested 5000 deep", "name: t\nbase: " + "[" * 5000 + "]" * 5000 + "\n", "values nested more than 64 deep"),
    ("a 2 MB study file", "name: t\n" + "# padding\n" * 200_000, r"[\d,]+ bytes; a study file is a few kilobytes \(at most 1,000,000 are read\)"),
    ("pbt with a space", with_change(variants={}, base__surrogate={"schedule": "fixed"}, search={
        "algorithm": "pbt", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "mutate": {"surrogate.beta": [0.5, 10]}}),
     "search.space: got .*, expected no space with algorithm: pbt"),
    ("pbt mutates another key", with_change(variants={}, search={"algorithm": "pbt", "mutate": {"lr": [1e-4, 1e-2]}}),
     "search.mutate: got 'lr', expected one of surrogate.beta"),
    ("pbt on a gradual schedule", with_change(variants={}, base__epochs=4, search={
        "algorithm": "pbt", "mutate": {"surrogate.beta": [0.5, 10]}}),
     "base.surrogate.schedule: got 'gradual', expected fixed: PBT sets the fixed schedule's beta"),
    ("pbt interval as long as training", with_change(variants={}, base__surrogate={"schedule": "fixed"}, search={
        "algorithm": "pbt", "interval": 2, "mutate": {"surrogate.beta": [0.5, 10]}}),
     r"search.interval: got 2, expected fewer epochs than base.epochs \(2\)"),
    ("pbt range", with_change(variants={}, base__epochs=4, base__surrogate={"schedule": "fixed"}, search={
        "algorithm": "pbt", "mutate": {"surrogate.beta": [0, 10]}}),
     r"search.mutate.surrogate.beta.loguniform: got \[0, 10\], expected \[low, high\] with 0 < low"),
    ("a beta per epoch, too few", with_change(variants={"A": {"surrogate.schedule": {"beta": [1.0]}}}),
     r"variants.A.surrogate.schedule.beta: got \[1.0\], expected one beta for each of the 2 epochs \(got 1\)"),
    ("a beta per epoch, not > 0", with_change(variants={"A": {"surrogate": {"schedule": {"beta": [1.0, 0]}}}}),
     r"variants.A.surrogate.schedule.beta\[1\]: got 0.0, expected a number > 0"),
]
