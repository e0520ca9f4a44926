"""MoLEx as a registered peft tuner: registration, exact reference output, training surface, reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from transformers import BertConfig, BertForSequenceClassification, BertModel, LlamaConfig, LlamaForCausalLM

from moc_cli.baselines import MolexConfig, MolexLayer, MolexModel, MolexPeftType, register_molex

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_bert_config(layers: int = 3) -> BertConfig:
    return BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 120, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_importing_the_package_registered_molex_and_registering_again_changes_nothing() -> None:
    entries = (PEFT_TYPE_TO_CONFIG_MAPPING["MOLEX"], PEFT_TYPE_TO_TUNER_MAPPING["MOLEX"])
    assert entries == (MolexConfig, MolexModel)
    assert PEFT_TYPE_TO_PREFIX_MAPPING["MOLEX"] == "molex_"
    register_molex()
    assert (PEFT_TYPE_TO_CONFIG_MAPPING["MOLEX"], PEFT_TYPE_TO_TUNER_MAPPING["MOLEX"]) == entries
    assert PEFT_TYPE_TO_PREFIX_MAPPING["MOLEX"] == "molex_"
    cfg = MolexConfig()
    assert cfg.peft_type is MolexPeftType.MOLEX
    assert (cfg.alpha, cfg.top_k, cfg.layers_pattern, cfg.router_temperature) == (0.95, 1, None, 1.0)
    assert (cfg.task_type, cfg.modules_to_save) == (None, None)


@pytest.mark.parametrize(
    "imports",
    [
        "import moc_cli.baselines",  # peft is first imported by the package's own import
        "from moc_cli.baselines import MolexConfig",
        "import moc_cli; import peft",
    ],
)
def test_molex_is_registered_by_the_import_alone(imports: str) -> None:
    code = f"{imports}\nfrom peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m\nprint(m['MOLEX'].__name__)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "MolexConfig\n"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": 1.5}, "MolexConfig.alpha must be in [0, 1], got 1.5"),
        ({"top_k": 0}, "MolexConfig.top_k must be >= 1, got 0"),
        ({"router_temperature": 0.0}, "MolexConfig.router_temperature must be > 0"),
        ({"routing": "layer"}, "MolexConfig.routing must be one of ['sequence', 'token'], got 'layer'"),
    ],
)
def test_bad_config_values_name_the_field(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        MolexConfig(**kwargs)
    assert fragment in str(err.value)


def test_unknown_model_type_asks_for_layers_pattern() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = type("Cfg", (), {"model_type": "toy", "hidden_size": 4, "to_dict": lambda self: {}})()
    with pytest.raises(ValueError, match="set MolexConfig.layers_pattern"):
        get_peft_model(model, MolexConfig())


def test_wraps_every_layer_and_only_routers_train() -> None:
    torch.manual_seed(0)
    model = get_peft_model(BertModel(tiny_bert_config()), MolexConfig())
    wrapped = [m for m in model.modules() if isinstance(m, MolexLayer)]
    assert [m.molex_index for m in wrapped] == [0, 1, 2]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [f"base_model.model.encoder.layer.{i}.molex_router.default.weight" for i in range(3)]
    assert model.get_nb_trainable_parameters()[0] == 3 * 32 * 3

    model.train()
    out = model(**batch()).last_hidden_state
    out.square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_seq_cls_trains_router_and_head_only() -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        BertForSequenceClassification(tiny_bert_config()), MolexConfig(task_type="SEQ_CLS")
    )
    trainable = {
        n.split(".molex_router")[0].split(".")[-1] for n, p in model.named_parameters() if p.requires_grad
    }
    assert trainable == {"0", "1", "2", "weight", "bias"}
    heads = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    assert heads == [
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    ]


def test_alpha_one_equals_base_exactly() -> None:
    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config()).eval()
    inputs = batch()
    with torch.no_grad():
        reference = base(**inputs).logits.clone()
        model = get_peft_model(base, MolexConfig(task_type="SEQ_CLS", alpha=1.0)).eval()
        assert torch.equal(model(**inputs).logits, reference)


def test_output_matches_an_independent_reference() -> None:
    """out_l = a*L_l(u) + (1-a)*g*L_j(u), j = argmax softmax(W_l mean_{real tokens}(u)), g its probability."""
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config(layers=2)).eval()
    layers = list(base.encoder.layer)
    inputs = batch()
    alpha = 0.7
    model = get_peft_model(base, MolexConfig(alpha=alpha)).eval()
    routers = [
        m.molex_router["default"].weight.detach() for m in model.modules() if isinstance(m, MolexLayer)
    ]
    with torch.no_grad():  # make sequences 0 and 1 choose different layers at layer 0
        m = inputs["attention_mask"].float().unsqueeze(-1)
        h0 = base.embeddings(input_ids=inputs["input_ids"])
        pooled = (h0 * m).sum(1) / m.sum(1)
        direction = pooled[0] - pooled[1]
        routers[0].copy_(torch.stack([direction, -direction]) * 50.0)
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        # additive 4-D mask, as the encoder hands it to its layers
        ext_mask = (1.0 - inputs["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        h = base.embeddings(input_ids=inputs["input_ids"])
        m = inputs["attention_mask"].float().unsqueeze(-1)
        chosen_layers = set()
        for w, layer in zip(routers, layers, strict=True):
            probs = torch.softmax(((h * m).sum(1) / m.sum(1)) @ w.T, dim=-1)
            gate, j = probs.max(-1)
            rows = []
            for b in range(h.size(0)):
                u = h[b : b + 1]
                mask_b = ext_mask[b : b + 1]
                own = layer(u, mask_b)
                other = layers[int(j[b])](u, mask_b)
                chosen_layers.add(int(j[b]))
                rows.append(alpha * own + (1 - alpha) * gate[b] * other)
            h = torch.cat(rows)
    assert chosen_layers == {0, 1}
    torch.testing.assert_close(got, h, atol=1e-5, rtol=1e-5)


def test_sequence_routing_ignores_padding_tokens() -> None:
    torch.manual_seed(0)
    model = get_peft_model(BertModel(tiny_bert_config()), MolexConfig()).eval()
    layer = next(m for m in model.modules() if isinstance(m, MolexLayer))
    shared = layer._molex_links[1]
    hidden = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    shared["attention_mask"] = mask
    padded = layer._routing_probs("default", hidden)
    shared["attention_mask"] = None
    alone = layer._routing_probs("default", hidden[:1, :4])
    torch.testing.assert_close(padded[:1], alone)


def test_token_routing_on_a_decoder_trains_and_generates() -> None:
    model = get_peft_model(tiny_llama(), MolexConfig(task_type="CAUSAL_LM", routing="token", alpha=0.8))
    inputs = batch()
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "molex_router" in n]
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    generated = model.generate(input_ids=inputs["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_merge_raises_and_unload_returns_the_base() -> None:
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config()).eval()
    inputs = batch()
    with torch.no_grad():
        reference = base(**inputs).last_hidden_state.clone()
    model = get_peft_model(base, MolexConfig())
    with pytest.raises(NotImplementedError, match="MoLEx cannot be merged"):
        model.merge_and_unload()
    plain = model.unload()
    assert not any(isinstance(m, MolexLayer) for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(plain(**inputs).last_hidden_state, reference)


def _train_a_step(model: torch.nn.Module) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    inputs = batch()
    model(**inputs, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    opt.step()
    model.eval()


def test_save_and_reload_gives_identical_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config())
    base.save_pretrained(tmp_path / "base")  # get_peft_model mutates the base: save it first
    model = get_peft_model(base, MolexConfig(task_type="SEQ_CLS", alpha=0.8))
    _train_a_step(model)
    inputs = batch(seed=3)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MOLEX" and saved["alpha"] == 0.8

    fresh = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, expected)
    assert not any(p.requires_grad for p in reloaded.parameters())

    # A fresh process that only imports moc_cli.baselines reproduces the same logits.
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "check.pt")
    script = (
        "import sys, torch; import moc_cli.baselines\n"
        "from peft import PeftModel\nfrom transformers import BertForSequenceClassification\n"
        "d = sys.argv[1]; data = torch.load(d + '/check.pt')\n"
        "m = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(d + '/base'), d + '/adapter')\n"
        "m.eval()\nwith torch.no_grad():\n    ok = torch.equal(m(**data['inputs']).logits, data['expected'])\n"
        "print('IDENTICAL' if ok else 'DIFFERENT')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("IDENTICAL")
