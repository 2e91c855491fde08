"""Training building blocks: prompt sampling and losses (the loop, distillation and DDP build on these)."""
