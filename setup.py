"""One distribution, import package ``haf``.

The top-level folders ``kernels/`` and ``pipelines/`` are installed as ``haf.kernels`` and
``haf.pipelines``: as top-level packages those names would collide with other distributions.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


setup(
    name="haf",
    version="0.1.0",
    description="Hierarchy-aware fixed-frame classification (HAFrame) at speed: fused Triton loss, DALI, DeepSpeed",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["haf", "haf.commands", "haf.frame", "haf.methods", "haf.kernels", "haf.pipelines"],
    package_dir={"haf": "haf", "haf.kernels": "kernels", "haf.pipelines": "pipelines"},
    install_requires=requirements(),
    entry_points={"console_scripts": ["haf = haf.cli:main"]},
)
