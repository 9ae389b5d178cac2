"""svgt: train, evaluate and ship SVGT value modules for frozen Hugging Face causal LMs (see README.md)."""
