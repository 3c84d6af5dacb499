"""The architecture holds: pure layers stay pure, and the operator starts without torch or nvflare."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import flare_operator
from tests.sample_data import REPO


def test_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(REPO / "pyproject.toml")], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_operator_package_imports_no_torch():
    """Importing every operator module (apps excluded: they run inside NVFlare) leaves torch out."""
    modules = [m.name for m in pkgutil.walk_packages(flare_operator.__path__, "flare_operator.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(k for k in ('torch', 'transformers', 'kopf') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "transformers" not in out


def test_operator_is_not_a_package():
    assert not (REPO / "operator" / "__init__.py").exists(), "operator/ must not shadow the stdlib module"
    import operator

    assert hasattr(operator, "itemgetter")
