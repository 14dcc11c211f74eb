"""The chapter's operators: its equations, the hand-derived autograd Functions, deferred weight gradients, the model."""
