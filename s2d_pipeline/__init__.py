"""s2d: sparse-to-dense post-training when verified labels are scarce (arXiv 2605.12483).

Spend scarce verified labels on RL of the strongest teacher, then move that skill into the small
student with label-free dense supervision (forward-KL warmup on teacher rollouts, then on-policy
distillation). Heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
