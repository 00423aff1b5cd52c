"""pyproject.toml stays in the form the setuptools that `pip install -e .` fetches accepts: the
README's two commands build kana with the newest setuptools, which ends `license` as a TOML table
on 2027-02-18 (its BuildBackendWarning says so), so a table would break a fresh install then."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_and_the_build_needs_a_setuptools_that_reads_one():
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert config["project"]["license"] == "MIT"  # a string (SPDX), not {text = ...}
    (setuptools,) = [req for req in map(Requirement, config["build-system"]["requires"])
                     if req.name == "setuptools"]
    assert not setuptools.specifier.contains("76.99"), setuptools  # 77 first reads SPDX license strings
