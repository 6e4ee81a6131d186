"""The package's API (isnm/__init__.py): every name resolves, and the torch-free part loads without torch."""
import importlib
import subprocess
import sys

import pytest

import isnm


def test_config_and_the_api_load_without_torch():
    code = ("import isnm, isnm.config, isnm.metrics, isnm.schedule; "
            "from isnm import parse_config, ConfigError, config_hash, with_setting, metrics, HASHED_WHEN_SET; "
            "import sys; assert 'torch' not in sys.modules, 'torch loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_training_loads_torch_on_first_use():
    code = "import sys; from isnm import train; assert callable(train) and 'torch' in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", isnm.__all__)
def test_every_exported_name_is_its_modules(name):
    module = importlib.import_module(isnm.EXPORTS[name])
    expected = module if module.__name__ == f"isnm.{name}" else getattr(module, name)
    assert getattr(isnm, name) is expected
    assert name in dir(isnm)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        isnm.trian
