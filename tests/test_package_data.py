"""pyproject.toml's package data names only files that exist, and every non-Python file the package needs."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aiplus"


def test_package_data_globs_match_files_and_cover_every_data_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "aiplus"
    ]
    shipped: set[Path] = set()
    for pattern in globs:
        found = {p for p in PACKAGE.glob(pattern) if p.is_file()}
        assert found, f"package data {pattern!r} matches no file under src/aiplus"
        shipped |= found
    # what setuptools ships only as package data: non-Python files, and modules outside a package (migrations)
    data_files = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix != ".py" or not (p.parent / "__init__.py").exists())
    }
    assert data_files <= shipped, f"not in package data: {sorted(map(str, data_files - shipped))}"
