"""Every module's imports are declared in the extra that installs it, and the SDK's extra pulls no
torch, NVFlare or Kopf (issue 16: a modeller's laptop installs `flare-operator[sdk]` and nothing heavy)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement

from tests.sample_data import REPO

PACKAGE = REPO / "operator" / "flare_operator"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Which extras a part of the package may rely on besides the base dependencies.
EXTRAS_OF = {
    "sdk": {"sdk"},
    "cli.py": {"operator", "sdk"},  # `flare-operator run` needs the operator; report/fetch the SDK's
    "main.py": {"operator"},
    "handlers": {"operator", "flare", "s3"},
    "runtime": {"operator", "flare"},
    "store": {"s3"},
    "nvflare": {"flare"},
    "catalog": {"flare"},  # the accountant (dp-accounting), imported where DP is calibrated
    "builders": {"flare"},
    "datagen": {"datagen"},
}
HEAVY = {"torch", "nvflare", "kopf", "transformers", "opacus"}


def _dist(name: str) -> str:
    return Requirement(name).name.lower().replace("_", "-")


def _declared(extras: set[str]) -> set[str]:
    names = {_dist(r) for r in PYPROJECT["dependencies"]}
    for extra in extras:
        names |= {_dist(r) for r in PYPROJECT["optional-dependencies"][extra]}
    return names


def _imports(path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t != "flare_operator"}


def test_every_import_is_declared_in_the_extra_of_its_part():
    dists = packages_distributions()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0]
        declared = _declared(EXTRAS_OF.get(part, set()))
        for top in sorted(_imports(path)):
            names = {_dist(d) for d in dists.get(top, [top])}
            if not names & declared:
                missing.append(f"{path.relative_to(REPO)} imports {top} ({', '.join(sorted(names))}): not in the base "
                               f"dependencies or the extras {sorted(EXTRAS_OF.get(part, set()))}")
    assert not missing, "\n".join(missing)


def test_the_sdk_extra_pulls_nothing_heavy():
    assert not _declared({"sdk"}) & HEAVY
    assert _declared({"s3"}) <= _declared({"sdk"}), "the SDK downloads results from S3 stores (store/results.py)"
    assert PYPROJECT["scripts"]["flareop"] == "flare_operator.sdk.cli:main"


def test_the_sdk_and_its_cli_import_with_kopf_torch_and_nvflare_absent():
    """Every SDK module and `flareop --help` work where the heavy packages cannot be imported."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"class Block:\n"
        f"    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(HEAVY)!r}: raise ImportError(f'{{name}} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import flare_operator.sdk as sdk\n"
        "for m in pkgutil.walk_packages(sdk.__path__, 'flare_operator.sdk.'): importlib.import_module(m.name)\n"
        "from flare_operator.sdk.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['job', '--help'])\n"
        "assert r.exit_code == 0 and 'submit' in r.output, r.output\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
