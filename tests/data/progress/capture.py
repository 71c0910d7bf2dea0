"""Regenerate the captured outputs next to this file (real tqdm, transformers' Trainer and accelerate's
logger writing to a file, as a training script's output reaches an attempt's log). CPU, a few seconds,
no downloads: `python tests/data/progress/capture.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

TQDM = """
import time
from tqdm.auto import tqdm
for _ in tqdm(range(40), mininterval=0):
    time.sleep(0.02)
"""

TRAINER = """
import tempfile, torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
model = LlamaForCausalLM(config)
rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16)).tolist()]
with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, max_steps=12, logging_steps=2, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", eval_strategy="steps",
                             eval_steps=6, per_device_eval_batch_size=4)
    Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:16]).train()
"""

ACCELERATE = """
import logging
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm
logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                    datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO)  # as accelerate's examples do
logger = get_logger(__name__)
accelerator = Accelerator(cpu=True)
total = 30
logger.info(f"  Total optimization steps = {total}")
bar = tqdm(range(total), disable=not accelerator.is_local_main_process)
for step in range(1, total + 1):
    bar.update(1)
    if step % 10 == 0:
        logger.info(f"step {step}/{total} loss {3.0 - step / 20:.4f}")
"""


def capture(name: str, code: str) -> None:
    with open(HERE / name, "wb") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, check=True,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"})


if __name__ == "__main__":
    capture("tqdm.log", TQDM)
    capture("trainer.log", TRAINER)
    capture("accelerate_logger.log", ACCELERATE)
