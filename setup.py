"""One distribution, import package ``haf``.

The top-level folders ``kernels/`` and ``pipelines/`` install as ``haf.kernels`` and ``haf.pipelines`` (as
top-level packages those names would collide with other distributions); ``configs/`` and ``hierarchies/`` ship as
package data under ``haf/configs`` and ``haf/hierarchies`` (found by ``haf.training.run_config.shipped_dir``).
"""
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

HERE = Path(__file__).parent
# Top-level folders installed under haf/: (package, folder, package-data patterns or None for code).
MAPPED = (("haf.kernels", "kernels", None), ("haf.pipelines", "pipelines", None),
          ("haf.configs", "configs", ["*.yaml", "*.md"]), ("haf.hierarchies", "hierarchies", ["*.json", "*.txt", "*.md"]))


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


packages = find_packages(include=["haf", "haf.*"])
package_dir = {"haf": "haf"}
package_data = {}
for package, folder, patterns in MAPPED:
    finder = find_packages if patterns is None else find_namespace_packages
    for name in ["", *finder(where=folder)]:
        full = f"{package}.{name}" if name else package
        packages.append(full)
        package_dir[full] = f"{folder}/{name.replace('.', '/')}" if name else folder
        if patterns is not None:
            package_data[full] = patterns

setup(
    name="haf",
    version="0.1.0",
    description="Hierarchy-aware fixed-frame classification (HAFrame) at speed: fused Triton loss, DALI, DeepSpeed",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    install_requires=requirements(),
    entry_points={"console_scripts": ["haf = haf.cli:main"]},
)
