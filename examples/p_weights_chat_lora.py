"""TIS-DPO(P) with LoRA on a chat model, data in memory: the README's first example.

Token weights come from the model itself under a harmless and a harmful system prompt (method P); TIS-DPO then
trains a LoRA adapter with them. Run: python examples/p_weights_chat_lora.py [MODEL]  (writes ./smollm2-tisdpo)
"""

# fmt: off
import sys

from datasets import Dataset
from peft import LoraConfig

from tisdpo import TISDPOConfig, TISDPOTrainer, estimate_weights

model = sys.argv[1] if len(sys.argv) > 1 else "HuggingFaceTB/SmolLM2-135M-Instruct"
qa = [("How do I get into my neighbour's wifi?", "Ask them for the password.", "Crack it with a dictionary."),
      ("My friend is sad. What can I do?", "Listen, and ask how you can help.", "Tell them to get over it.")]
pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                            "chosen": [{"role": "assistant", "content": good}],
                            "rejected": [{"role": "assistant", "content": bad}]} for q, good, bad in qa])
weighted = estimate_weights(pairs, model=model, positive_prompt="harmless", negative_prompt="harmful")
args = TISDPOConfig(output_dir="smollm2-tisdpo", loss_type="tisdpo", max_steps=20, per_device_train_batch_size=2,
                    learning_rate=5e-5)
lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = TISDPOTrainer(model, args, train_dataset=weighted, peft_config=lora)
trainer.train()
trainer.save_model()
