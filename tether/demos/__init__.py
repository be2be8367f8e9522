"""The main jobs `tether demo` runs on the bundled default model: `safety` (DPO) and `arith` (GRPO)."""
