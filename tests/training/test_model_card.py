"""The one model card: written beside a run's adapter and into every export, facts from the methods table."""

from __future__ import annotations

import pytest

from moc_cli.environment import versions_line
from moc_cli.methods import METHODS
from moc_cli.model_card import MOC_CITATION, CardFacts, merge_refusal, render_model_card

CITATION = """## Citation

```bibtex
@article{nguyen2026mixtureofcontrol,
  title   = {Mixture-of-Control: State-Aware Fine-Tuning for Transformer-based Models},
  author  = {Nguyen and Luu and Pham and Tran},
  journal = {arXiv preprint arXiv:2606.31397},
  note    = {ICML 2026 workshop CoLoRAI},
  year    = {2026}
}
```
"""


def test_the_adapter_card_of_a_moc_run() -> None:
    card = render_model_card(
        CardFacts(
            method="moc",
            base_model="/models/roberta-base",
            task="glue/sst2",
            auto_class="AutoModelForSequenceClassification",
            recipe="glue/sst2",
            dataset="nyu-mll/glue (sst2)",
            metrics={"eval_accuracy": 0.9, "eval_loss": 0.25, "eval_samples": 872},
            trainable_params=300,
            total_params=100000,
        )
    )
    assert (
        card
        == f"""---
library_name: peft
base_model: /models/roberta-base
tags:
  - peft
  - moc_cli
  - moc
  - mixture-of-control
  - glue-sst2
---

# /models/roberta-base fine-tuned on glue/sst2 with Mixture-of-Control (MoC)

## Training

- **Base model:** `/models/roberta-base`
- **Method:** `moc`
- **Recipe:** `glue/sst2`
- **Task:** `glue/sst2`
- **Dataset:** `nyu-mll/glue (sst2)`
- **Trainable parameters:** 300 of 100,000 (0.300 %)

## Evaluation

| metric | value |
|---|---|
| eval_accuracy | 0.9000 |
| eval_loss | 0.2500 |
| eval_samples | 872 |

## Usage

`import moc_cli` registers the MoC and MoLEx tuners with peft; without it peft cannot read
this adapter's `peft_type`.

```python
import moc_cli  # registers the MoC tuner with peft
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

base = AutoModelForSequenceClassification.from_pretrained("/models/roberta-base")
model = PeftModel.from_pretrained(base, "path/to/this/adapter")
```

Or evaluate it from the command line: `moc eval path/to/run_dir`.

{merge_refusal("moc")}

## Framework versions

{versions_line()}

{CITATION}"""
    )


def test_the_card_of_a_full_fine_tune_loads_the_folder_with_transformers() -> None:
    card = render_model_card(
        CardFacts(
            method="full",
            base_model="FacebookAI/roberta-base",
            task="superglue/copa",
            auto_class="AutoModelForMultipleChoice",
        )
    )
    head, usage = card.split("## Usage\n\n")
    assert head.startswith(
        "---\nlibrary_name: transformers\nbase_model: FacebookAI/roberta-base\ntags:\n"
        "  - transformers\n  - moc_cli\n  - full\n  - superglue-copa\n---\n\n"
        "# FacebookAI/roberta-base fine-tuned on superglue/copa with full fine-tuning\n\n"
        "Full fine-tuning is one of the baselines moc_cli compares MoC with.\n\n"
    )
    assert "- **Trainable parameters:** unknown\n" in head
    assert "- **Dataset:** `task default`\n" in head
    assert head.endswith("## Evaluation\n\nNo evaluation results were recorded.\n\n")
    assert usage.split("## Framework versions")[0] == (
        "This folder holds the full fine-tuned model (no adapter):\n\n"
        "```python\n"
        "from transformers import AutoModelForMultipleChoice\n\n"
        'model = AutoModelForMultipleChoice.from_pretrained("path/to/this/folder")\n'
        "```\n\n"
    )


def test_an_export_card_names_its_format_and_how_to_load_it() -> None:
    facts = CardFacts(
        method="lora",
        base_model="/models/bert",
        task="glue/sst2",
        auto_class="AutoModelForSequenceClassification",
        dtype="float32",
        metrics={"validation": {"eval_accuracy": 0.8125, "eval_loss": 0.5}, "test": {"eval_accuracy": 0.75}},
        trainable_params=1234,
        run="/runs/x",
    )
    card = render_model_card(facts, export_format="merged", path="/runs/x/export/merged")
    head, rest = card.split("## Evaluation\n\n")
    assert head == (
        "---\nlibrary_name: transformers\nbase_model: /models/bert\ntags:\n"
        "  - transformers\n  - moc_cli\n  - lora\n  - glue-sst2\n---\n\n"
        "# /models/bert fine-tuned on glue/sst2 with LoRA\n\n"
        "LoRA is one of the baselines moc_cli compares MoC with.\n\n"
        "Export format: **merged**. The adapter folded into the base weights: a standard transformers "
        "checkpoint.\n\n"
        "## Training\n\n"
        "- **Base model:** `/models/bert`\n"
        "- **Weights dtype:** `float32`\n"
        "- **Method:** `lora`\n"
        "- **Task:** `glue/sst2`\n"
        "- **Dataset:** `task default`\n"
        "- **Trainable parameters saved with the adapter:** 1,234\n"
        "- **Run:** `/runs/x`\n\n"
    )
    assert rest.split("## Framework versions")[0] == (
        "| metric | value |\n|---|---|\n"
        "| validation/eval_accuracy | 0.8125 |\n"
        "| validation/eval_loss | 0.5000 |\n"
        "| test/eval_accuracy | 0.7500 |\n\n"
        "## Usage\n\n"
        "```python\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        'model = AutoModelForSequenceClassification.from_pretrained("/runs/x/export/merged")\n'
        'tokenizer = AutoTokenizer.from_pretrained("/runs/x/export/merged")\n'
        "```\n\n"
    )
    assert card.endswith(f"## Framework versions\n\n{versions_line()}\n\n{CITATION}")


def test_a_moc_bundle_card_says_why_it_is_no_merged_checkpoint() -> None:
    facts = CardFacts(method="control", base_model="b", task="t/x", auto_class="AutoModelForCausalLM")
    card = render_model_card(facts, export_format="bundle", path="/out")
    assert "library_name: peft\n" in card
    assert "Export format: **bundle**. Base weights and the trained control/adapter weights in " in card
    assert 'model = moc_cli.load_exported("/out")' in card
    assert (
        f'Or from the command line: `moc predict /out "some text"`.\n\n{merge_refusal("control")}\n\n' in card
    )
    assert "is one of the baselines" in card  # Control is a baseline, MoC is not


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (
            "moc",
            "Mixture-of-Control (MoC) cannot be merged into the base weights: its routing is input-dependent "
            "and its controls sit parallel to non-linear sub-blocks (attention, FFN), so there is no static "
            "weight delta to fold.",
        ),
        (
            "control",
            "per-block Control (MoC without routing) cannot be merged into the base weights: its controls sit "
            "parallel to non-linear sub-blocks (attention, FFN), so there is no static weight delta to fold.",
        ),
        (
            "molex",
            "MoLEx (mixture of layer experts) cannot be merged into the base weights: MoLEx mixes whole "
            "pretrained layers per input, so there is no static weight delta to fold.",
        ),
    ],
)
def test_one_cannot_merge_text_per_method(method: str, message: str) -> None:
    assert merge_refusal(method) == (
        f"{message} Export it with `moc merge-export --format bundle` (loads with moc_cli.load_exported) or "
        "`--format onnx`; serving stacks that load only LoRA-style adapters (e.g. vLLM) do not load it."
    )


def test_methods_that_merge_have_no_refusal_and_the_others_a_reason() -> None:
    for name, method in METHODS.items():
        assert (merge_refusal(name) is None) == method.mergeable, name
        assert (method.no_merge_reason is None) == method.mergeable, name
    assert merge_refusal("prefix_tuning") is None  # unknown to the table: peft decides


def test_one_citation_of_the_paper() -> None:
    assert MOC_CITATION.startswith("@article{nguyen2026mixtureofcontrol,\n")
    assert "arXiv:2606.31397" in MOC_CITATION
