"""Load an AutoTraj export with LLaMA-Factory's own loader: dataset_info.json, the sharegpt converter,
the `qwen` template and the supervised (sft) or pairwise (rm) processor.

usage: llamafactory_load.py DATASET_DIR TOKENIZER STAGE NAME
Run with LLaMA-Factory on PYTHONPATH (tests/test_export.py installs it into a throwaway directory).
Prints one JSON object: the example count, the decoded input and its trained runs (the chosen side's for rm).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments, ModelArguments
from transformers import AutoTokenizer, Seq2SeqTrainingArguments


def main() -> None:
    dataset_dir, tokenizer_path, stage, name = sys.argv[1:5]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    data_args = DataArguments(dataset=name, dataset_dir=dataset_dir, template="qwen", cutoff_len=4096)
    training_args = Seq2SeqTrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none")
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    model_args = ModelArguments(model_name_or_path=tokenizer_path)
    module = get_dataset(template, model_args, data_args, training_args, stage=stage, tokenizer=tokenizer)
    row = module["train_dataset"][0]
    prefix = "" if stage == "sft" else "chosen_"
    ids, labels = row[f"{prefix}input_ids"], row[f"{prefix}labels"]
    runs = itertools.groupby(zip(ids, labels, strict=True), key=lambda pair: pair[1] != -100)
    trained = [tokenizer.decode([token for token, _ in run]) for kept, run in runs if kept]
    print(json.dumps({"examples": len(module["train_dataset"]), "text": tokenizer.decode(ids), "trained": trained}))


if __name__ == "__main__":
    main()
