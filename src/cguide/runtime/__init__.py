"""The sampling runtime: drawing guided batches from checkpoints (draw.py), the speed options
(speed.py), the CUDA-graph captured step (cuda_graph.py) and distributed drawing (distributed.py)."""
