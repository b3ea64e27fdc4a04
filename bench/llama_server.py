"""llama.cpp's own ``llama-server``, built once from the llama.cpp sources vendored in the llama-cpp-python sdist.

The same llama.cpp as the one aiplus embeds (the installed llama-cpp-python's version), so the engine benchmark
compares serving code, not llama.cpp versions. The binary is cached under ``~/.cache/aiplus-bench``; a failed
download or build returns None with the reason, and the benchmark skips that column.
Usage (build only): python bench/llama_server.py
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("AIPLUS_BENCH_CACHE", Path.home() / ".cache" / "aiplus-bench"))


def llama_server_binary(log=print) -> Path | None:
    """The cached ``llama-server`` for the installed llama-cpp-python, building it on first use."""
    version = importlib.metadata.version("llama-cpp-python")
    root = CACHE / f"llama-server-{version}"
    binary = root / "llama-server"
    if binary.is_file():
        return binary
    if not shutil.which("cmake"):
        log("llama-server: cmake not found; skipping its column")
        return None
    root.mkdir(parents=True, exist_ok=True)
    build_log = root / "build.log"
    log(
        f"llama-server: building from the llama-cpp-python {version} sdist (several minutes; log: {build_log})"
    )
    with build_log.open("w") as out:
        try:
            sdist = _download_sdist(version, root, out)
            source = _unpack(sdist, root)
            build = root / "build"
            cmake = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
            cmake += ["-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
            subprocess.run(cmake, stdout=out, stderr=subprocess.STDOUT, check=True)
            jobs = str(os.cpu_count() or 1)
            subprocess.run(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        except (subprocess.CalledProcessError, OSError, tarfile.TarError, FileNotFoundError) as exc:
            log(f"llama-server: build failed ({exc}); skipping its column (log: {build_log})")
            return None
    built = next((p for p in (root / "build" / "bin").glob("llama-server") if p.is_file()), None)
    if built is None:
        log(f"llama-server: no binary after the build; skipping its column (log: {build_log})")
        return None
    shutil.copy2(built, binary)
    return binary


def _download_sdist(version: str, root: Path, out) -> Path:
    found = list(root.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(root)]
        + [f"llama-cpp-python=={version}"],
        stdout=out,
        stderr=subprocess.STDOUT,
        check=True,
    )
    return next(root.glob("llama_cpp_python-*.tar.gz"))


def _unpack(sdist: Path, root: Path) -> Path:
    target = root / "src"
    if not target.is_dir():
        with tarfile.open(sdist) as tar:
            tar.extractall(target, filter="data")
    return next(target.glob("*/vendor/llama.cpp"))


if __name__ == "__main__":
    print(llama_server_binary() or "no binary")
