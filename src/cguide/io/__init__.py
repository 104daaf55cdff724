"""File I/O below the entry points: atomic writes, checkpoints (load any trained net by kind),
image grids and experiment loggers."""
