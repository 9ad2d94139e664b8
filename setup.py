"""Packaging: the concept folders at the repository's top level install as sub-packages of `fedward`.

Metadata, dependencies and the Flower app stay in pyproject.toml; this file only maps `common/` to
`fedward.common` (and `server/`, `client/`, `strategies/`, `simulations/` alike), so the installed
distribution has one top-level import name. A source tree finds the same names through `fedward/__init__.py`.
"""

from setuptools import find_packages, setup

CONCEPTS = ("common", "server", "client", "strategies", "simulations")

packages = ["fedward"]
package_dir = {"fedward": "fedward"}
for concept in CONCEPTS:
    package_dir[f"fedward.{concept}"] = concept
    packages += [f"fedward.{concept}", *(f"fedward.{concept}.{sub}" for sub in find_packages(concept))]

setup(packages=packages, package_dir=package_dir)
