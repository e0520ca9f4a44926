"""Loading policy: safetensors only, no remote code, unless the user opts in.

Pickle files (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`, `*.pickle`) execute code when unpickled,
and turning `trust_remote_code` on imports Python from a model folder; both need an explicit flag.
Building a model (`moc_cli.models`), evaluating a run and exporting one all apply this policy
through the functions below: `check_weights_safe` for local folders, `from_pretrained_kwargs` for
what `from_pretrained` may read, `resolve_trust_remote_code` for remote code.
`find_unsafe_calls` is the static check the test suite runs over the package: no `yaml.load`
without a safe loader, no `yaml.unsafe_load`/`full_load`, no `pickle.load(s)`, no `torch.load`
without `weights_only=True`, and no literal `trust_remote_code=True` (it must come from config).
"""

from __future__ import annotations

import ast
import functools
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Trainer bookkeeping inside checkpoint-N: read by Trainer itself on resume, not model weights.
TRAINER_STATE_FILES = frozenset(
    {"training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state.pth"}
)
# How a command line allows pickle weights; a run config allows them with `model.allow_pickle: true`.
ALLOW_PICKLE_FLAG = "--allow-pickle"


class UnsafeWeightsError(ValueError):
    """A model or adapter folder holds only pickle weights and pickle loading was not allowed."""


def pickle_weight_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """Pickle-format weight files in `model_dir` (not recursive; Trainer state files excluded)."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and p.suffix in PICKLE_SUFFIXES
        and p.name not in TRAINER_STATE_FILES
        and not p.name.startswith("rng_state")
    )


def pickle_weights_to_load(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The pickle weight files loading `model_dir` would read.

    None when the folder holds safetensors weights (transformers and peft prefer them) or is not a
    local folder (a Hub id: pass `from_pretrained_kwargs()` to `from_pretrained` instead).
    """
    root = Path(model_dir)
    if not root.is_dir() or any(root.glob("*.safetensors")):
        return []
    return pickle_weight_files(root)


def check_weights_safe(
    model_dir: str | os.PathLike[str], allow_pickle: bool = False, opt_in: str = f"pass {ALLOW_PICKLE_FLAG}"
) -> None:
    """Raise `UnsafeWeightsError` naming the pickle files loading `model_dir` would read, and the fix.

    `opt_in` says how the user allows them (`pass --allow-pickle`, `set model.allow_pickle=true`).
    With `allow_pickle=True` this only logs a warning.
    """
    pickled = pickle_weights_to_load(model_dir)
    if not pickled:
        return
    if allow_pickle:
        names = ", ".join(str(p) for p in pickled)
        logger.warning("Loading pickle weight files because pickle loading was allowed: %s", names)
        return
    raise UnsafeWeightsError(
        f"{model_dir} has no safetensors weights, only pickle files ({', '.join(p.name for p in pickled)}), "
        "which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) writes "
        f"model.safetensors), or {opt_in} if you trust them"
    )


def resolve_trust_remote_code(value: bool | None) -> bool:
    """True only for an explicit `True`; warns (once per process) when remote code is enabled."""
    if value is True:
        _announce_remote_code()
        return True
    return False


@functools.cache
def _announce_remote_code() -> None:
    # One build resolves the setting for its tokenizer and again for its model.
    logger.warning("trust_remote_code is on: Python code shipped with the model will be executed.")


def from_pretrained_kwargs(
    trust_remote_code: bool | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    """Keyword arguments enforcing the loading policy in `AutoModel*.from_pretrained` calls."""
    kwargs: dict[str, Any] = {"trust_remote_code": resolve_trust_remote_code(trust_remote_code)}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    return kwargs


# ---------------------------------------------------------------- static scan


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _call_problem(call: ast.Call) -> str | None:
    func = _dotted(call.func)
    remote = _keyword(call, "trust_remote_code")
    if isinstance(remote, ast.Constant) and remote.value is True:
        return f"{func or 'call'}(trust_remote_code=True): take the value from the run config"
    if func in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
        return f"{func}(): use yaml.safe_load"
    if func in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if _dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"):
            return f"{func}() without a safe Loader: use yaml.safe_load"
    if func in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load"):
        return f"{func}(): pickle runs arbitrary code; use safetensors or JSON"
    if func == "torch.load":
        weights_only = _keyword(call, "weights_only")
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            return "torch.load() without weights_only=True"
    return None


def find_unsafe_calls(root: str | os.PathLike[str]) -> list[str]:
    """`path:line: problem` for every unsafe deserialisation call in the `*.py` files under `root`."""
    findings = []
    for path in sorted(Path(root).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as err:
            findings.append(f"{path}:{err.lineno}: does not parse ({err.msg})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (problem := _call_problem(node)):
                findings.append(f"{path}:{node.lineno}: {problem}")
    return findings
