"""Tokens/s and peak memory of ``openledger.train.finetune`` vs a plain Trainer + PEFT run.

    python benchmarks/train_speed.py [--records 200] [--repeats 2] [--model smollm2-135m-instruct]

Both sides train the same base model with the same LoRA settings (r=8, alpha 16, dropout
0.05, all linear projections), batch size, learning rate, schedule, seed and max length,
for one epoch over the same 200 instruction records (the openledger side reads them from a
datanet snapshot, the baseline from the exported rows). Each run is a fresh subprocess, so
its peak RSS (``ru_maxrss``, model loading included) is its own; the two sides alternate
and the median of ``--repeats`` runs is reported. Tokens/s counts the non-padding tokens
trained on, divided by the wall time of ``trainer.train()`` (model loading excluded).

Held-out loss (mean over learnt tokens of 24 records outside the datanet, the same
measure for both sides) is reported before and after training.

The baseline masks the prompt by its rendered length and learns the rest of the rendering
(for ChatML that includes the newline after ``<|im_end|>``, one token per record more than
openledger learns); everything else is transformers' and PEFT's defaults.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir

LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
TRAIN = {"batch_size": 4, "learning_rate": 1e-3, "max_length": 128, "seed": 0}
NAMES = ["Ada", "Bo", "Cy", "Di", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "keys"]


def machine() -> str:
    """Return the CPU model, core count and Python version."""
    return describe_machine()


def make_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Word problems with a fixed answer style the base model does not use on its own."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        rows.append(
            {
                "instruction": f"{name} has {a} {item} and gets {b} more. How many {item} now?",
                "response": f"Ledger: {a} + {b} = {a + b}. {name} now has {a + b} {item}.",
            }
        )
    return rows


# -- workers (each in its own process) -------------------------------------------------------


def held_out_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> float:
    """Mean loss over learnt tokens (openledger's mask) of the held-out rows."""
    import torch

    from openledger.data import InstructionRecord
    from openledger.train import format_record

    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids, labels = format_record(InstructionRecord(**row), tokenizer)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += float((target != -100).sum())
    return total / count


def worker_ours(
    model_name: str, rows: list[dict[str, str]], held: list[dict[str, str]]
) -> dict[str, float]:
    from openledger.crypto import Account
    from openledger.data import Datanet, InstructionRecord
    from openledger.train import LoraRecipe, finetune

    folder = scratch_dir("ol-train-bench-")
    datanet = Datanet.create(folder / "dn", name="bench", schema=InstructionRecord)
    datanet.contribute(rows, contributor=Account.create())
    snapshot = datanet.snapshot()
    recipe = LoraRecipe(base_model=model_name, epochs=1, **LORA, **TRAIN)
    run = finetune(recipe, snapshot, folder / "out", progress=False, device="cpu")
    after = held_out_loss(run.model, run.tokenizer, held)
    with run.model.disable_adapter():  # the base model, without loading it a second time
        before = held_out_loss(run.model, run.tokenizer, held)
    return {
        "tokens_per_second": run.metrics["tokens_per_second"],
        "train_seconds": run.metrics["train_runtime"],
        "tokens": run.metrics["num_tokens_trained"],
        "steps": run.metrics["num_steps"],
        "held_out_before": before,
        "held_out_after": after,
    }


def plain_examples(
    tokenizer: Any, rows: list[dict[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    examples = []
    for row in rows:
        messages = [
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["response"]},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            messages[:1], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        cut = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return examples


def worker_plain(
    model_name: str, rows: list[dict[str, str]], held: list[dict[str, str]]
) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from openledger.models import resolve_model

    path = str(resolve_model(model_name).path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    before = held_out_loss(model, tokenizer, held)
    torch.manual_seed(TRAIN["seed"])
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
    )
    model = get_peft_model(model, config)
    examples = plain_examples(tokenizer, rows, int(TRAIN["max_length"]))
    args = TrainingArguments(
        output_dir=str(scratch_dir("plain-train-bench-")),
        per_device_train_batch_size=int(TRAIN["batch_size"]),
        learning_rate=float(TRAIN["learning_rate"]),
        num_train_epochs=1,
        seed=int(TRAIN["seed"]),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = sum(len(e["input_ids"]) for e in examples)
    return {
        "tokens_per_second": tokens / seconds,
        "train_seconds": seconds,
        "tokens": float(tokens),
        "steps": float(trainer.state.global_step),
        "held_out_before": before,
        "held_out_after": held_out_loss(model, tokenizer, held),
    }


def run_worker(kind: str, args: Any, data_file: Path) -> dict[str, float]:
    """Run one side in a fresh process and return its figures (peak RSS added)."""
    command = [sys.executable, __file__, "--worker", kind, "--model", args.model]
    out = subprocess.run(
        [*command, "--data", str(data_file), "--threads", str(args.threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--worker", choices=["ours", "plain"])
    parser.add_argument("--data")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        body = json.loads(Path(args.data).read_text())
        work = worker_ours if args.worker == "ours" else worker_plain
        figures = work(args.model, body["rows"], body["held"])
        figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures))
        return
    data_file = scratch_dir("train-bench-") / "rows.json"
    data_file.write_text(json.dumps({"rows": make_rows(args.records, 1), "held": make_rows(24, 2)}))
    results: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
    for i in range(args.repeats):
        for kind in ("plain", "ours") if i % 2 else ("ours", "plain"):
            results[kind].append(run_worker(kind, args, data_file))
            print(kind, json.dumps(results[kind][-1]), flush=True)
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: Any) -> None:
    import torch
    import transformers

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"\nmachine: {machine()}; {versions}; torch threads: {args.threads or 'default'}")
    print(f"model {args.model}, {args.records} records, 1 epoch, median of {args.repeats} runs")
    print("| | openledger.train | plain Trainer + PEFT | ratio |")
    print("|---|---|---|---|")
    for key, label in [
        ("tokens_per_second", "tokens/s"),
        ("train_seconds", "train time (s)"),
        ("peak_rss_mib", "peak RSS (MiB)"),
        ("held_out_before", "held-out loss before"),
        ("held_out_after", "held-out loss after"),
        ("steps", "optimizer steps"),
        ("tokens", "tokens trained"),
    ]:
        ours, plain = median("ours", key), median("plain", key)
        print(f"| {label} | {ours:.4g} | {plain:.4g} | {ours / plain:.3f} |")


if __name__ == "__main__":
    main()
