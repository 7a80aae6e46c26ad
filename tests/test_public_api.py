"""The names pmg_core exports at top level resolve, lazily, to the documented objects."""

import subprocess
import sys

import pytest

import pmg_core
import pmg_core.training


@pytest.mark.parametrize(
    "package, name",
    [(pmg_core, name) for name in pmg_core.__all__] + [(pmg_core.training, name) for name in pmg_core.training.__all__],
)
def test_every_exported_name_is_the_object_its_module_defines(package, name):
    """Each export is the class or function of that name defined inside the package, not a stray re-export."""
    exported = getattr(package, name)
    assert exported.__name__ == name
    assert exported.__module__.startswith(package.__name__ + "."), exported.__module__


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        pmg_core.no_such_thing  # noqa: B018


def test_importing_the_package_alone_loads_no_torch():
    """`import pmg_core` stays cheap: heavy modules load on first use of a name that needs them."""
    code = "import sys, pmg_core; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
