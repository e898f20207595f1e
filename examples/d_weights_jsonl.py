"""TIS-DPO(D) on a JSONL file of prompt/chosen/rejected rows: token rewards from a DPO model against a reverse-DPO
model (both trained with `tisdpo train`, the second with --reverse_pairs true), turned into weights, saved as a
weights file (for `tisdpo visualize` and `tisdpo train --loss_type tisdpo`), then TIS-DPO training of the base.

    python examples/d_weights_jsonl.py DATA.jsonl BASE_MODEL DPO_MODEL REVERSE_DPO_MODEL [OUTPUT_DIR]
"""

import os
import sys

from datasets import load_dataset

from tisdpo import TISDPOConfig, TISDPOTrainer, estimate_weights, render_heatmaps, save_weights

data_file, base_model, dpo_model, reverse_dpo_model = sys.argv[1:5]
output_dir = sys.argv[5] if len(sys.argv) > 5 else "tisdpo-d"

pairs = load_dataset("json", data_files=data_file, split="train")
weighted = estimate_weights(
    pairs, positive_model=dpo_model, negative_model=reverse_dpo_model, transform="rank_based", max_length=512
)
save_weights(os.path.join(output_dir, "weights_D.jsonl"), weighted)  # with its provenance, weights_D.jsonl.meta.json
render_heatmaps(weighted, os.path.join(output_dir, "heatmaps"))  # heatmap.html: which tokens weigh most

args = TISDPOConfig(
    output_dir=output_dir,
    loss_type="tisdpo",
    num_train_epochs=1,
    per_device_train_batch_size=4,
    learning_rate=1e-6,
    max_length=512,
    save_strategy="no",
    report_to="none",
)
trainer = TISDPOTrainer(base_model, args, train_dataset=weighted)
trainer.train()
trainer.save_model()
trainer.create_model_card(dataset_name=data_file, weights_meta=weighted.meta)
print(f"model saved to {output_dir}")
