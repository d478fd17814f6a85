"""Training: optimizers (optim.py) and the train step as one graph (step.py)."""
