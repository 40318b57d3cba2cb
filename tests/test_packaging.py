"""pyproject.toml as setuptools reads it: `make serve` installs the project, and must print no deprecations."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
SPDX_LICENSE_SETUPTOOLS = Version("77")  # the first setuptools that reads `license` as an SPDX string

setuptools = pytest.importorskip("setuptools")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib


def build_requirement(name: str) -> Requirement:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    [requirement] = [Requirement(r) for r in requires if Requirement(r).name == name]
    return requirement


def test_the_build_requires_a_setuptools_that_reads_an_spdx_licence() -> None:
    specifier = build_requirement("setuptools").specifier
    assert not specifier.contains("76.99") and specifier.contains(str(SPDX_LICENSE_SETUPTOOLS))


@pytest.mark.skipif(Version(setuptools.__version__) < SPDX_LICENSE_SETUPTOOLS, reason="setuptools before 77")
def test_setuptools_reads_the_licence_without_deprecation_warnings() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    deprecations = [str(w.message) for w in caught if "deprecat" in f"{w.category.__name__} {w.message}".lower()]
    assert deprecations == []
    assert dist.metadata.license_expression == "Apache-2.0"
