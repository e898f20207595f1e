"""TISDPOTrainer in a script written for TRL's DPOTrainer: the same arguments (model, args, train_dataset,
processing_class, peft_config), with TISDPOConfig in place of DPOConfig. The objective is any of
tisdpo train's --loss_type values (here plain DPO; TIS-DPO needs chosen_weights / rejected_weights columns).

    python examples/trl_style_script.py [MODEL] [OUTPUT_DIR]
"""

import sys

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from tisdpo import TISDPOConfig, TISDPOTrainer  # was: from trl import DPOConfig, DPOTrainer

model_name = sys.argv[1] if len(sys.argv) > 1 else "HuggingFaceTB/SmolLM2-135M-Instruct"
output_dir = sys.argv[2] if len(sys.argv) > 2 else "smollm2-dpo"

model = AutoModelForCausalLM.from_pretrained(model_name)
tokenizer = AutoTokenizer.from_pretrained(model_name)
train_dataset = Dataset.from_list(
    [  # standard format: text prompt, chosen and rejected completions
        {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Berlin."},
        {"prompt": "Two plus two equals", "chosen": " four.", "rejected": " five."},
        {"prompt": "Water freezes at", "chosen": " zero degrees Celsius.", "rejected": " fifty degrees."},
        {"prompt": "The sun rises in the", "chosen": " east.", "rejected": " west."},
    ]
)

training_args = TISDPOConfig(
    output_dir=output_dir,
    loss_type="dpo",
    beta=0.1,
    max_steps=4,  # was: DPOConfig(...)
    per_device_train_batch_size=2,
    learning_rate=5e-5,
    save_strategy="no",
    report_to="none",
)
trainer = TISDPOTrainer(
    model=model,
    args=training_args,
    train_dataset=train_dataset,
    processing_class=tokenizer,
    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
)
trainer.train()
trainer.save_model()
print(f"adapter saved to {output_dir}")
