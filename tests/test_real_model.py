"""The whole path on a real pretrained model and real data: SmolLM2-135M-Instruct (imported from
its GGUF) on GSM8K, through the real entrypoints in real processes.

The tiny random models of the other tests cannot show what a user meets: a ChatML template (its
BOS is also the turn opener), pad = EOS, tied embeddings, a model that predicts most answer
tokens. The model trains at tens of tokens per second on 2 cores, so every run is a few steps on
short GSM8K rows, and the runs are shared between the tests (module-scoped fixtures). Every
sequence fits `max_length`, so no prompt is cut.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from data_tools.atomic import write_jsonl
from data_tools.sources import load_examples
from data_tools.tokenization import IGNORE_INDEX, encode_examples, encode_prompts
from runtime.import_gguf import RECORD, default_gguf, import_gguf
from runtime.import_gguf import main as import_main
from runtime.modeling import load_tokenizer
from tests.launch import env, run
from tests.models import save_tiny_model
from tests.real_model import SMOLLM2_PARAMETERS

MAX_LEN = 512
STEPS = 3  # of the SFT runs (1 and 2 processes); BASH + LoRA runs BASH_STEPS
BASH_STEPS = 2
# The default system turn that SmolLM2's template renders when a chat has none.
SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n"
)
# One process gets both cores; the launcher's processes get one each (tests/launch.py).
TWO_THREADS = {"OMP_NUM_THREADS": "2"}


def chat_prompt(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def train_args(
    root: Path, model: Path, out: str, micro: int, *extra: str, steps: int = STEPS, lr: float = 1e-5
) -> list[str]:
    """A short run on data.jsonl. The learning rate is constant: the logged rate is not what this
    file tests."""
    return [
        *("--model_name_or_path", str(model), "--data", str(root / "data.jsonl")),
        *("--task", "math", "--output_dir", str(root / out), "--max_length", str(MAX_LEN)),
        *("--micro_batch_size", str(micro), "--max_steps", str(steps), "--precision", "fp32"),
        *("--learning_rate", str(lr), "--lr_scheduler", "constant", "--warmup_steps", "0"),
        *extra,
    ]


def refused(result: subprocess.CompletedProcess, words: str) -> None:
    """The run stopped with a one-line reason, not a traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert words in result.stderr, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


# --- shared runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, gsm8k: Path, smollm2: Path) -> Path:
    """16 short real GSM8K training rows (the shortest of the first 1,000; about 115 tokens
    under the chat template) in data.jsonl, and SmolLM2's teacher-forced tokens for them."""
    root = tmp_path_factory.mktemp("real_model")
    rows = jsonl(gsm8k / "train.jsonl")[:1000]
    rows.sort(key=lambda r: len(r["question"]) + len(r["answer"]))
    write_jsonl(root / "data.jsonl", rows[:16])
    run(
        "generate",
        ["--model_name_or_path", str(smollm2), "--data", str(root / "data.jsonl")]
        + ["--task", "math", "--teacher_forced", "true", "--max_length", str(MAX_LEN)]
        + ["--precision", "fp32", "--output", str(root / "predictions.jsonl")],
        **TWO_THREADS,
    )
    return root


@pytest.fixture(scope="module")
def model(smollm2: Path):
    """The imported folder, loaded with plain transformers in this process."""
    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def sft(root: Path, smollm2: Path) -> Path:
    """Full fine-tuning, 1 process (ZeRO-2), global batch 2, with the export and its check."""
    run("train", train_args(root, smollm2, "sft", 2), **TWO_THREADS)
    return root / "sft"


@pytest.fixture(scope="module")
def bash_lora(root: Path, smollm2: Path) -> Path:
    """BASH with SmolLM2's own predictions at p = 0.5, as a LoRA (q_proj, v_proj), exported
    merged."""
    extra = ["--mode", "bash", "--predictions", str(root / "predictions.jsonl")]
    extra += ["--ss_schedule", "constant", "--ss_p_max", "0.5"]
    extra += ["--lora_rank", "4", "--lora_target_modules", "q_proj,v_proj"]
    args = train_args(root, smollm2, "bash_lora", 2, *extra, steps=BASH_STEPS, lr=1e-4)
    run("train", args, **TWO_THREADS)
    return root / "bash_lora"


@pytest.fixture(scope="module")
def generations(root: Path, smollm2: Path) -> Path:
    """Greedy answers to 4 prompts of different lengths, in one padded batch."""
    out = root / "generations.jsonl"
    run(
        "generate",
        ["--model_name_or_path", str(smollm2), "--data", str(root / "data.jsonl")]
        + ["--task", "math", "--limit", "4", "--batch_size", "4", "--max_new_tokens", "24"]
        + ["--max_prompt_length", str(MAX_LEN), "--precision", "fp32", "--output", str(out)],
        **TWO_THREADS,
    )
    return out


# --- the importer --------------------------------------------------------------------------------

# Loads the folder with the gguf package made unimportable, and saves its logits on a prompt.
PLAIN_LOAD = """
import json, sys
sys.modules["gguf"] = None  # any import of gguf fails: the folder must not need it
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
text = tokenizer.apply_chat_template(
    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
)
ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(input_ids=ids).logits}, out)
print(json.dumps({
    "parameters": sum(p.numel() for p in model.parameters()),
    "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    "text": text,
    "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
}))
"""


def test_imported_folder_loads_without_gguf_and_matches_it(
    smollm2: Path, model, tmp_path: Path
) -> None:
    """The folder loads with plain transformers, the gguf package unimportable, as the whole
    model with its chat template; its weights are the GGUF file's, bit for bit."""
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(smollm2), question, str(tmp_path / "out.pt")],
        env=env(**TWO_THREADS),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["parameters"] == SMOLLM2_PARAMETERS
    assert seen["tied"]
    assert seen["text"] == chat_prompt(question)  # the chat template came along
    assert seen["special"] == ["<|im_start|>", "<|im_end|>", "<|im_end|>"]
    assert json.loads((smollm2 / RECORD).read_text())["parameters"] == SMOLLM2_PARAMETERS

    # The model loaded from the GGUF file itself (dequantised to fp32): the same weights, the
    # same logits here, and in the other process up to its thread count's rounding.
    gguf_file = default_gguf()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    imported = model.state_dict()
    for name, weight in reference.state_dict().items():
        assert torch.equal(imported[name], weight), name
    saved = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = reference(input_ids=saved["ids"]).logits
        assert torch.equal(model(input_ids=saved["ids"]).logits, expected)
    torch.testing.assert_close(saved["logits"], expected, rtol=0, atol=1e-5)


def test_import_is_written_once(smollm2: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert import_gguf(default_gguf(), smollm2) == smollm2
    assert "already imported" in capsys.readouterr().out
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before

    # A folder that holds something else is not replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a finished import"):
        import_gguf(default_gguf(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    # No file given and none installed: one sentence.
    monkeypatch.setattr("runtime.import_gguf.default_gguf", lambda: None)
    with pytest.raises(SystemExit, match="no --gguf_file given"):
        import_main(["--output_dir", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()


# --- data ----------------------------------------------------------------------------------------


def test_chat_template_label_mask_on_gsm8k(gsm8k: Path, smollm2: Path) -> None:
    """The loss is on the reference and <|im_end|> only; the masked part is exactly the template's
    system turn, user turn and generation prompt, and exactly what generation is given."""
    tokenizer = load_tokenizer(str(smollm2))
    examples = []
    for split in ("train", "test"):
        examples += load_examples(str(gsm8k / f"{split}.jsonl"), task="math", limit=24)[0]
    encoded, report = encode_examples(tokenizer, examples, 1024)
    assert report.prompts_cut == 0 and not report.skipped_ids
    prompts, _ = encode_prompts(tokenizer, [e.prompt for e in examples], 1024)
    for example, e, prompt in zip(examples, encoded, prompts, strict=True):
        n = next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX)
        assert all(label == IGNORE_INDEX for label in e.labels[:n])
        assert e.labels[n:] == e.input_ids[n:]  # every response token and the EOS trained
        assert e.input_ids[:n] == prompt
        assert tokenizer.decode(e.input_ids[:n]) == chat_prompt(example.prompt)
        assert tokenizer.decode(e.labels[n:]) == example.response + "<|im_end|>"
        assert e.input_ids[0] == tokenizer.bos_token_id and e.labels[-1] == tokenizer.eos_token_id


# --- generation ----------------------------------------------------------------------------------


def test_batched_greedy_generation_equals_one_at_a_time(generations: Path, model, smollm2) -> None:
    """`generate`'s left-padded batch gives, token for token, what plain transformers gives for
    each prompt alone."""
    tokenizer = load_tokenizer(str(smollm2))
    rows = jsonl(generations)
    prompts, _ = encode_prompts(tokenizer, [r["prompt"] for r in rows], MAX_LEN)
    assert len({len(p) for p in prompts}) > 1, "prompts of one length would need no padding"
    config = GenerationConfig(
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for row, prompt in zip(rows, prompts, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt) :]
        alone = out.tolist()
        if tokenizer.eos_token_id in alone:
            alone = alone[: alone.index(tokenizer.eos_token_id) + 1]
        assert row["generation_ids"] == alone
        assert row["generation"] == tokenizer.decode(alone, skip_special_tokens=True)


def test_teacher_forced_predictions_are_the_argmax(root: Path, model, smollm2: Path) -> None:
    """Each prediction is the argmax of a plain forward pass over prompt + reference at the
    position before it; the pretrained model gets most of GSM8K's answer tokens right."""
    tokenizer = load_tokenizer(str(smollm2))
    examples, _ = load_examples(str(root / "data.jsonl"), task="math")
    encoded, _ = encode_examples(tokenizer, examples, MAX_LEN)
    predictions = {r["id"]: r["predictions"] for r in jsonl(root / "predictions.jsonl")}
    agree = total = 0
    for e in encoded:
        positions = [t for t, label in enumerate(e.labels) if label != IGNORE_INDEX]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
        expected = [int(logits[t - 1].argmax()) for t in positions]
        assert predictions[e.id] == expected, e.id
        agree += sum(p == e.input_ids[t] for p, t in zip(expected, positions, strict=True))
        total += len(positions)
    assert agree / total > 0.5, f"only {agree}/{total} tokens as the reference: not the real model?"


# --- training ------------------------------------------------------------------------------------


def test_bash_accepts_this_models_predictions_and_refuses_others(
    root: Path, smollm2: Path, bash_lora: Path, sft: Path, tokenizer
) -> None:
    rows = jsonl(bash_lora / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, BASH_STEPS + 1))
    assert all(0 < r["train/replaced_fraction"] < 1 for r in rows)

    # Another model's tokens (the tiny random model, its own tokenizer): refused.
    save_tiny_model(tokenizer, root / "tiny")
    run(
        "generate",
        ["--model_name_or_path", str(root / "tiny"), "--data", str(root / "data.jsonl")]
        + ["--task", "math", "--teacher_forced", "true", "--max_length", str(MAX_LEN)]
        + ["--output", str(root / "tiny_predictions.jsonl")],
        **TWO_THREADS,
    )
    extra = ["--mode", "bash", "--predictions", str(root / "tiny_predictions.jsonl")]
    result = run("train", train_args(root, smollm2, "refused_tiny", 2, *extra), check=False)
    refused(result, "another tokenizer than this run's")

    # This model's tokens, for a run that starts from other weights (the SFT export): refused.
    extra = ["--mode", "bash", "--predictions", str(root / "predictions.jsonl")]
    result = run("train", train_args(root, sft / "export", "refused_sft", 2, *extra), check=False)
    refused(result, "other weights than those this run starts from")


@pytest.mark.slow
def test_zero3_on_two_processes_gives_the_losses_of_one(root: Path, smollm2: Path, sft: Path):
    """The same global batches (2 x 1 against 1 x 2): the same per-step losses."""
    extra = ["--deepspeed_config", "ds_configs/zero3.json", "--no_export"]
    run("train", train_args(root, smollm2, "zero3", 1, *extra), nproc=2, timeout=600)
    one = [r["train/loss"] for r in jsonl(sft / "metrics.jsonl")]
    two = [r["train/loss"] for r in jsonl(root / "zero3" / "metrics.jsonl")]
    assert len(one) == len(two) == STEPS
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=0)


def test_exports_reload_with_plain_transformers(smollm2: Path, sft: Path, bash_lora: Path, model):
    """Both exports are whole models that load with no missing weight. The merged LoRA changed
    q_proj and v_proj only; full fine-tuning changed the rest too."""
    base = model.state_dict()
    for run_dir in (sft, bash_lora):
        assert (run_dir / "export_check.json").is_file()
        assert not (run_dir / "export" / "adapter_config.json").exists()
        loaded, info = AutoModelForCausalLM.from_pretrained(
            run_dir / "export", dtype=torch.float32, output_loading_info=True
        )
        assert not any(info.values()), info
        assert sum(p.numel() for p in loaded.parameters()) == SMOLLM2_PARAMETERS
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
        weights = loaded.state_dict()
        changed = {name for name, w in weights.items() if not torch.equal(w, base[name])}
        if run_dir == bash_lora:
            assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
        else:
            assert "model.layers.0.mlp.up_proj.weight" in changed
            assert "model.embed_tokens.weight" in changed


def test_datasets_reads_every_output(root: Path, sft, bash_lora, generations, tmp_path) -> None:
    """Every jsonl these runs wrote loads with `datasets`, one row per line."""
    files = sorted(root.rglob("*.jsonl"))
    names = {f.relative_to(root).as_posix() for f in files}
    for expected in ("generations.jsonl", "predictions.jsonl", "sft/metrics.jsonl"):
        assert expected in names
    for path in files:
        if path.name == "data.jsonl":
            continue
        loaded = datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(tmp_path)
        )
        assert loaded.num_rows == len(jsonl(path)), path
