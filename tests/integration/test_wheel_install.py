"""``shop migrate`` from a wheel: the migration scripts (the repository's ``alembic/``)
ship inside the package, as ``shop/_alembic/``.

The wheel is built from a copy of the sources (setuptools would otherwise leave
``build/`` in the checkout, and pack whatever stale files it holds) and installed
into a fresh venv outside the repository. That venv borrows the project venv's
third-party packages through a ``.pth`` line, which adds the directory to
``sys.path`` without running the ``.pth`` files in it, so the editable install of
``shop`` there stays out: ``shop`` comes from the wheel or not at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from shop.migrate import alembic_config

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FreshVenv:
    bin: Path
    site_packages: Path
    workdir: Path  # no checkout here or above it

    def run(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
        if url is not None:
            env["SHOP_DATABASE_URL"] = url
        return subprocess.run(list(args), cwd=self.workdir, env=env, capture_output=True,
                              text=True, timeout=120, check=False)


def run_checked(*args: str | Path) -> None:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for directory in ("shop", "alembic"):
        shutil.copytree(REPO / directory, src / directory,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    run_checked(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                "--wheel-dir", root / "dist", src)
    (wheel,) = (root / "dist").glob("shop-*.whl")

    venv = root / "venv"
    run_checked(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run_checked(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                "--no-deps", "--no-index", wheel)
    site_packages = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        text=True).strip())
    borrowed = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "_project_venv.pth").write_text("".join(f"{p}\n" for p in borrowed))

    workdir = root / "work"
    workdir.mkdir()
    return FreshVenv(bin=venv / "bin", site_packages=site_packages, workdir=workdir)


def test_the_fresh_venv_imports_shop_from_the_wheel(fresh_venv: FreshVenv) -> None:
    result = fresh_venv.run(str(fresh_venv.bin / "python"), "-c", "import shop, shop.migrate as m; "
                            "print(shop.__file__, m.SCRIPT_LOCATION)")

    assert result.returncode == 0, result.stderr
    shop_file, scripts = map(Path, result.stdout.split())
    assert shop_file == fresh_venv.site_packages / "shop" / "__init__.py"
    assert scripts == fresh_venv.site_packages / "shop" / "_alembic"
    assert (scripts / "env.py").is_file()
    assert (scripts / "script.py.mako").is_file()
    assert sorted(p.name for p in (scripts / "versions").glob("*.py")) == sorted(
        p.name for p in (REPO / "alembic" / "versions").glob("*.py"))


def test_shop_migrate_from_a_wheel_brings_an_empty_database_to_head(
        fresh_venv: FreshVenv, db_url: str) -> None:
    result = fresh_venv.run(str(fresh_venv.bin / "shop"), "migrate", url=db_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "latest schema" in result.stdout
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert version == head
    assert "orders" in tables
