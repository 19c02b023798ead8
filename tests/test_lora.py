"""LoRA under ZeRO-3 with 2 processes: the adapter trains, the base stays as it was, and the
merged and adapter exports of one checkpoint are the same model, loaded by peft and by
`load_model`. The run exports the adapter (and checks it in a fresh process); the merged export
is written here from the same checkpoint by the function train's export calls. Under ZeRO-0,
where the export reads the engine's own tensors, the merged export leaves the engine as it was
and passes its check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from data_tools.collate import pad_right
from data_tools.sources import load_examples
from data_tools.synthetic_math import Difficulty, write_splits
from data_tools.tokenization import encode_examples
from runtime import lora
from runtime.modeling import load_model
from tests.launch import run
from tests.models import MODELS
from train.args import TrainArgs
from train.checkpoint import latest_tag

RANK, ALPHA = 4, 8.0


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits[batch["attention_mask"].bool()]


def base_model(tmp_path: Path, tokenizer) -> Path:
    """A tiny random Llama and its tokenizer, saved as a pretrained folder."""
    (tmp_path / "tiny.json").write_text(json.dumps(MODELS["llama-64"]))
    base_dir = tmp_path / "base"
    load_model(tokenizer, config_file=str(tmp_path / "tiny.json"), seed=1).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return base_dir


def lora_run(tmp_path: Path, base_dir: Path, ds_config: str, export: str) -> list[str]:
    """train's options for 4 steps of LoRA on 48 synthetic problems (written here), fp32, into
    tmp_path/run."""
    write_splits(tmp_path / "data", {"train": 48}, Difficulty(max_steps=2), seed=2)
    return [
        *("--model_name_or_path", str(base_dir), "--data", str(tmp_path / "data/train.jsonl")),
        *("--output_dir", str(tmp_path / "run"), "--deepspeed_config", ds_config),
        *("--max_length", "128", "--micro_batch_size", "4", "--max_steps", "4"),
        *("--learning_rate", "1e-2", "--lr_scheduler", "constant", "--precision", "fp32"),
        *("--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), "--lora_export", export),
    ]


def test_lora_zero3_exports(tmp_path, tokenizer) -> None:
    base_dir = base_model(tmp_path, tokenizer)
    out = tmp_path / "run"
    run("train", lora_run(tmp_path, base_dir, "ds_configs/zero3.json", "adapter"), nproc=2)
    losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").open()]
    assert losses[-1] < losses[0]
    assert (out / "export_check.json").exists()  # the export's logits matched the engine's
    adapter_dir, merged_dir = out / "export", tmp_path / "merged"
    # The merged export of the same checkpoint, as train's export writes it (one launch less).
    ckpt = out / "checkpoints"
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=latest_tag(ckpt))
    trained = lora.add_lora(
        AutoModelForCausalLM.from_pretrained(base_dir),
        RANK,
        ALPHA,
        0.0,
        "all-linear",
        str(base_dir),
    )
    lora.save_export(trained, state_dict, merged_dir, "merged", torch.float32)

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    assert not (adapter_dir / "model.safetensors").exists()
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    base, merged = (
        load_file(base_dir / "model.safetensors"),
        load_file(merged_dir / "model.safetensors"),
    )
    assert merged.keys() == base.keys()
    # Every projection of attention and MLP has an adapter, trained away from its zero init;
    # the merged weight is the base weight plus (alpha / rank) B A; all else is the base's.
    adapted = {
        k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        for k in adapter
        if "lora_A" in k
    }
    assert len(adapted) == MODELS["llama-64"]["num_hidden_layers"] * 7
    for name, weight in base.items():
        if name in adapted:
            a = adapter["base_model.model." + name.replace(".weight", ".lora_A.weight")]
            b = adapter["base_model.model." + name.replace(".weight", ".lora_B.weight")]
            assert b.abs().max() > 0
            torch.testing.assert_close(merged[name], weight + ALPHA / RANK * b @ a)
        else:
            assert torch.equal(merged[name], weight), name

    examples, _ = load_examples(tmp_path / "data/train.jsonl", task="math")
    batch = pad_right(encode_examples(tokenizer, examples[:4], 128)[0], tokenizer.pad_token_id)
    batch = {k: v for k, v in batch.items() if k != "labels"}
    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir
    )
    reference = logits(unmerged, batch)
    assert (
        reference - logits(AutoModelForCausalLM.from_pretrained(base_dir), batch)
    ).abs().max() > 1e-3
    for folder in (merged_dir, adapter_dir):
        torch.testing.assert_close(
            logits(load_model(tokenizer, str(folder)), batch), reference, rtol=1e-5, atol=1e-5
        )
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(merged_dir), batch),
        reference,
        rtol=1e-5,
        atol=1e-5,
    )


def test_lora_zero0_merged_export_passes_its_check(tmp_path, tokenizer) -> None:
    """Without ZeRO the export is made from the engine's own parameters, after which the check
    compares the engine's logits with the export's. Merging the adapter into those tensors in
    place added B A to the engine's base weights, so the engine applied the adapter twice and
    the check failed. One process: the checked engine is rank 0's."""
    base_dir = base_model(tmp_path, tokenizer)
    run("train", lora_run(tmp_path, base_dir, "ds_configs/zero0.json", "merged"))
    report = json.loads((tmp_path / "run/export_check.json").read_text())  # written if it passed
    assert report["max_abs_logit_diff"] <= report["tolerance"]


def test_a_merged_export_leaves_the_trained_model_as_it_was(tmp_path, tokenizer) -> None:
    """`save_export` is given the live module's tensors under ZeRO-0; the merge writes new ones."""
    model = lora.add_lora(
        AutoModelForCausalLM.from_pretrained(base_model(tmp_path, tokenizer)),
        RANK,
        ALPHA,
        0.0,
        "all-linear",
        None,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: B is no longer zero, so a merge changes weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # as train's export
    lora.save_export(model, state_dict, tmp_path / "merged", "merged", torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    merged = load_file(tmp_path / "merged/model.safetensors")
    q = "model.layers.0.self_attn.q_proj"
    delta = (
        before[f"base_model.model.{q}.lora_B.default.weight"]
        @ before[f"base_model.model.{q}.lora_A.default.weight"]
    )
    torch.testing.assert_close(
        merged[f"{q}.weight"],
        before[f"base_model.model.{q}.base_layer.weight"] + ALPHA / RANK * delta,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lora_rank": -1}, "lora_rank must be >= 0"),
        ({"lora_rank": 4, "lora_export": "both"}, "lora_export must be merged or adapter"),
    ],
)
def test_bad_lora_options_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainArgs(output_dir="out", **options)


def test_an_adapter_export_needs_a_pretrained_base(tmp_path, tokenizer) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(MODELS["llama-64"]))
    model = load_model(tokenizer, config_file=str(tmp_path / "tiny.json"))
    args = TrainArgs(output_dir="out", lora_rank=4, lora_export="adapter")
    with pytest.raises(ValueError, match="lora_export adapter needs model_name_or_path"):
        lora.from_args(model, args, base=None)


def test_an_adapter_is_not_merged_into_zero3_partitions(tmp_path) -> None:
    (tmp_path / lora.ADAPTER_CONFIG).write_text("{}")
    # transformers keeps this by weak reference: it says "ZeRO-3" while the name holds it
    ds_config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
    try:
        with pytest.raises(ValueError, match="cannot be merged into ZeRO-3 partitioned weights"):
            lora.load_merged(str(tmp_path), torch.float32)
    finally:
        unset_hf_deepspeed_config()
        del ds_config
