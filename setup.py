"""The one thing about the build that pyproject.toml cannot say: the migration scripts
in the repository's ``alembic/`` ship inside the wheel, as ``shop/_alembic/``.

``[tool.setuptools.packages.find]`` cannot map a directory to another name, so the
packages are listed here: every ``shop*`` package under ``shop/``, found as before, plus
``alembic/`` mapped to ``shop._alembic`` (its ``versions/`` are package data,
pyproject.toml). ``shop.migrate`` reads the scripts from there in an installed wheel, and
from ``alembic/`` in a checkout.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["shop*"]), "shop._alembic"],
    package_dir={"shop._alembic": "alembic"},
)
