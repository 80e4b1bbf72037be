"""The distribution: dependency ranges and extras in pyproject.toml, one version, the licence and py.typed, and
optional dependencies that say which extra installs them when they are missing."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import haf
from haf.cli import main, run_reporting_errors
from haf.optional_deps import EXTRAS, MissingExtraError, available, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL_TOP_LEVEL = {name.split(".")[0] for name in EXTRAS} | {"nvidia"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def test_core_requirements_are_lower_bounds_without_gpu_stack_or_test_tools():
    core = PYPROJECT["project"]["dependencies"]
    names = {_name(r) for r in core}
    assert "torch>=2.11" in core
    for requirement in core:
        assert ">=" in requirement and "==" not in requirement and "<" not in requirement, requirement
    assert not names & {"triton", "deepspeed", "nvidia-dali-cuda130", "timm", "onnx", "onnxruntime", "pytest",
                        "pytest-benchmark", "pytest-timeout", "nltk"}


def test_extras_name_each_optional_dependency():
    extras = {key: {_name(r) for r in value} for key, value in PYPROJECT["project"]["optional-dependencies"].items()}
    assert extras["dali"] == {"nvidia-dali-cuda130"}
    assert extras["deepspeed"] == {"deepspeed"}
    assert extras["timm"] == {"timm"}
    assert extras["onnx"] == {"onnx", "onnxruntime"}
    assert extras["dev"] == {"pytest", "pytest-benchmark", "pytest-timeout", "nltk"}
    assert set(EXTRAS.values()) <= set(extras)  # every extra the helper names exists


def test_requirements_txt_pins_the_test_environment_exactly():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    pinned = {_name(ln): ln for ln in lines}
    assert pinned["torch"].startswith("torch==2.13.0")
    for line in lines:
        assert "==" in line and ">" not in line, f"requirements.txt must pin exactly: {line}"
    # It installs every requirement of the package and every extra (so the tests of each run).
    project = PYPROJECT["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    assert wanted <= set(pinned), wanted - set(pinned)


def test_one_version_source():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "haf.__version__"}
    assert "version=" not in (ROOT / "setup.py").read_text()
    assert importlib.metadata.version("haf") == haf.__version__


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"haf {haf.__version__}"


def test_licence_and_typing_marker_ship():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Copyright (c) 2026 The haf authors" in licence
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (Path(haf.__file__).parent / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize("module, extra", [("deepspeed", "deepspeed"), ("nvidia.dali", "dali"), ("timm", "timm"),
                                           ("onnx", "onnx"), ("onnxruntime", "onnx")])
def test_missing_extra_is_one_line_naming_it(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingExtraError) as info:
        require(module, purpose="this feature")
    message = str(info.value)
    assert f"pip install 'haf[{extra}]'" in message and "\n" not in message and module in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    assert not available(module)


def test_missing_submodule_names_the_extra(monkeypatch):
    for name in [name for name in sys.modules if name.startswith("nvidia.dali.")]:  # loaded by earlier tests
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(MissingExtraError, match=r"haf\[dali\]"):
        require("nvidia.dali.plugin.pytorch", purpose="the DALI loader")


def test_installed_but_broken_is_not_called_missing(monkeypatch, tmp_path):
    package = tmp_path / "timm"
    package.mkdir()
    (package / "__init__.py").write_text("import haf_test_absent_dependency_of_timm\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    with pytest.raises(MissingExtraError) as info:
        require("timm", purpose="timm backbones")
    message = str(info.value)
    assert "installed but fails to import" in message and "haf_test_absent_dependency_of_timm" in message
    assert "haf[timm]" in message


def test_require_refuses_a_module_that_is_no_extra():
    with pytest.raises(ValueError, match="not an optional dependency"):
        require("json", purpose="nothing")


def test_require_returns_the_module_when_present():
    assert require("json", purpose="a test", extra="dev").__name__ == "json"


def test_command_line_prints_a_missing_extra_as_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    code = run_reporting_errors("haf train", lambda: require("deepspeed", purpose="deepspeed.enabled: true"))
    err = capsys.readouterr().err
    assert code == 2
    assert err == "haf train: error: deepspeed.enabled: true needs deepspeed, which is not installed: " \
                  "pip install 'haf[deepspeed]'\n"


def test_dali_loader_reports_the_extra(monkeypatch):
    from haf.pipelines.loaders import dali_loader

    for name in [name for name in sys.modules if name.startswith("nvidia.dali.")]:  # loaded by earlier tests
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'haf\[dali\]'"):
        dali_loader._dali()


def test_optional_dependencies_are_imported_only_through_the_helper():
    """Every ``import deepspeed`` / ``nvidia.dali`` / ``timm`` / ``onnx`` in the package goes through haf.optional_deps,
    so a missing one always names its extra."""
    offenders = []
    for folder in ("haf", "kernels", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "haf" / "optional_deps.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in OPTIONAL_TOP_LEVEL:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert offenders == [], "\n".join(offenders)
