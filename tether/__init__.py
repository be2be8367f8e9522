"""tether: align language models after pre-training — feedback, training, audit in one loop."""

import warnings

__version__ = "0.1.0"

# peft reads `model.is_gradient_checkpointing` whenever it wraps a model (get_peft_model,
# PeftModel.from_pretrained), and transformers 5 deprecated that property: every LoRA run printed
# this FutureWarning, which the user can do nothing about. Only this message is silenced.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)
