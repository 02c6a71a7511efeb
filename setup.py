"""The installed layout: the folders compiler/, isa/ and runtime/ install as zhenwu.compiler,
zhenwu.isa and zhenwu.runtime, so that zhenwu claims one top-level name (`zhenwu`) only.
Everything else about the package is in pyproject.toml."""

from setuptools import find_packages, setup

SUBPACKAGES = ("compiler", "isa", "runtime")

setup(
    package_dir={"zhenwu": "zhenwu", **{f"zhenwu.{name}": name for name in SUBPACKAGES}},
    packages=["zhenwu", *(f"zhenwu.{package}" for package in
                          find_packages(include=[f"{name}*" for name in SUBPACKAGES]))],
)
