"""Supervised fine-tuning: the code that runs inside a training process (needs the
`gpu` extra: torch, transformers, peft)."""
