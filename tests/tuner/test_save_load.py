"""Save, then reload in a fresh process: identical logits, frozen when not trainable, state saved once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from moc_tuner_testkit import ARCHS, tiny
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from moc_cli import MocConfig

VARIANT_FOR = {
    "bert": "both-shared",
    "llama": "both-separate",
    "vit": "block",
    "gpt2": "ffn",
    "mpnet": "attn",
}


def _train_a_bit(model, t) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(3):
        model(**t.batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_fresh_process_reload_all_architectures(tmp_path: Path) -> None:
    jobs = []
    for arch in ARCHS:
        t = tiny(arch)
        base = t.build()
        base.save_pretrained(tmp_path / arch / "base")  # before wrapping: get_peft_model mutates the base
        variant = VARIANT_FOR.get(arch, "both-shared")
        cfg = MocConfig(r=4, variant=variant, task_type=t.task_type, learnable_alpha=arch == "llama")
        model = get_peft_model(base, cfg)
        _train_a_bit(model, t)
        with torch.no_grad():
            logits = model(**t.model_inputs).logits
        model.save_pretrained(tmp_path / arch / "adapter")
        torch.save({"inputs": t.model_inputs, "logits": logits}, tmp_path / arch / "expected.pt")
        jobs.append((arch, type(base).__name__))

        keys = list(load_file(tmp_path / arch / "adapter" / "adapter_model.safetensors"))
        moc_keys = [k for k in keys if "moc_" in k]
        # shared state saved once, at the tuner level, never per layer
        assert all(k.startswith("base_model.moc_state.") for k in moc_keys), moc_keys
        n_sites = len(cfg.site_types)
        assert len([k for k in moc_keys if ".A." in k]) == n_sites
        assert len([k for k in moc_keys if ".router." in k]) == len(cfg.router_keys)
        saved = json.loads((tmp_path / arch / "adapter" / "adapter_config.json").read_text())
        assert saved["peft_type"] == "MOC" and saved["variant"] == variant

    script = textwrap.dedent(
        f"""
        import sys
        import moc_cli
        print("cli", sorted(m for m in ("typer", "click", "moc_cli.cli") if m in sys.modules))
        import torch, transformers
        from peft import PeftModel
        torch.set_num_threads(1)
        root = {str(tmp_path)!r}
        for arch, cls in {jobs!r}:
            base = getattr(transformers, cls).from_pretrained(f"{{root}}/{{arch}}/base").eval()
            model = PeftModel.from_pretrained(base, f"{{root}}/{{arch}}/adapter", low_cpu_mem_usage=arch == "llama")
            exp = torch.load(f"{{root}}/{{arch}}/expected.pt")
            with torch.no_grad():
                logits = model(**exp["inputs"]).logits
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            print(arch, torch.equal(logits, exp["logits"]), len(trainable))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert lines.pop("cli") == "[]"  # `import moc_cli` stays free of the CLI stack
    assert lines == {arch: "True 0" for arch, _ in jobs}


def test_reload_trainable_and_under_other_adapter_name(tmp_path: Path) -> None:
    t = tiny("bert")
    base = t.build()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, MocConfig(r=4, task_type="SEQ_CLS"))
    _train_a_bit(model, t)
    with torch.no_grad():
        logits = model(**t.model_inputs).logits
    model.save_pretrained(tmp_path / "adapter")

    fresh = type(base).from_pretrained(tmp_path / "base").eval()
    again = PeftModel.from_pretrained(fresh, tmp_path / "adapter", is_trainable=True, adapter_name="other")
    with torch.no_grad():
        assert torch.equal(again(**t.model_inputs).logits, logits)
    trainable = {n for n, p in again.named_parameters() if p.requires_grad}
    assert "base_model.moc_state.other.router.block" in trainable
    assert any("classifier.modules_to_save.other" in n for n in trainable)


@pytest.mark.slow  # a fresh interpreter importing peft takes tens of seconds on a loaded machine
def test_fresh_process_without_moc_import_cannot_load(tmp_path: Path) -> None:
    t = tiny("bert")
    base = t.build()
    base.save_pretrained(tmp_path / "base")
    get_peft_model(base, MocConfig(r=2, task_type="SEQ_CLS")).save_pretrained(tmp_path / "adapter")
    script = (
        "import transformers\nfrom peft import PeftModel\n"
        f"b = transformers.BertForSequenceClassification.from_pretrained({str(tmp_path / 'base')!r})\n"
        f"PeftModel.from_pretrained(b, {str(tmp_path / 'adapter')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "MOC" in proc.stderr  # unregistered: `import moc_cli` is required


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_load_adapter_second_adapter(tmp_path: Path, low_cpu_mem_usage: bool) -> None:
    t = tiny("llama")
    base = t.build()
    model = get_peft_model(base, MocConfig(r=4, task_type="CAUSAL_LM"))
    _train_a_bit(model, t)
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        expected = model(**t.model_inputs).logits
    model.load_adapter(tmp_path / "a", adapter_name="copy", low_cpu_mem_usage=low_cpu_mem_usage)
    model.set_adapter("copy")
    with torch.no_grad():
        assert torch.equal(model(**t.model_inputs).logits, expected)
