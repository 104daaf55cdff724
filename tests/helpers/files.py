"""What is on disk, to show a failed run changed nothing."""

from __future__ import annotations

from pathlib import Path


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under roots with its bytes; Hydra's own run logs (outputs/, hydra/, .hydra/) aside."""
    files = {}
    for root in roots:
        for p in sorted(root.rglob("*") if root.is_dir() else [root]):
            if p.is_file() and not {"outputs", "hydra", ".hydra"} & set(p.relative_to(root.parent).parts):
                files[str(p)] = p.read_bytes()
    return files
