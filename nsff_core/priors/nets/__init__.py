"""Pretrained networks (RAFT, DPT, Mask R-CNN, their loading) and the pure algorithms the prior
stages share (flow operations, the rigidity test)."""
