"""The package mapping of the ``haf`` distribution (metadata, dependencies and version: pyproject.toml).

The top-level folders ``kernels/`` and ``pipelines/`` install as ``haf.kernels`` and ``haf.pipelines`` (as
top-level packages those names would collide with other distributions); ``configs/`` and ``hierarchies/`` ship as
package data under ``haf/configs`` and ``haf/hierarchies`` (found by ``haf.shipped.shipped_dir``).
"""
from setuptools import find_namespace_packages, find_packages, setup

# Top-level folders installed under haf/: (package, folder, package-data patterns or None for code).
MAPPED = (("haf.kernels", "kernels", None), ("haf.pipelines", "pipelines", None),
          ("haf.configs", "configs", ["*.yaml", "*.md"]), ("haf.hierarchies", "hierarchies", ["*.json", "*.txt", "*.md"]))

packages = find_packages(include=["haf", "haf.*"])
package_dir = {"haf": "haf"}
package_data = {"haf": ["py.typed"]}
for package, folder, patterns in MAPPED:
    finder = find_packages if patterns is None else find_namespace_packages
    for name in ["", *finder(where=folder)]:
        full = f"{package}.{name}" if name else package
        packages.append(full)
        package_dir[full] = f"{folder}/{name.replace('.', '/')}" if name else folder
        if patterns is not None:
            package_data[full] = patterns

setup(packages=packages, package_dir=package_dir, package_data=package_data)
