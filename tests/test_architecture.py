"""The architecture contracts of .importlinter hold: a core of plain torch (no Lightning, Hydra, OmegaConf,
W&B), layers that import one way, and no import cycles. `make test` runs them first too."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    config = ROOT / ".importlinter"
    proc = subprocess.run([str(lint), str(config)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    declared = config.read_text().count("[importlinter:contract:")  # every contract of the file was checked
    assert declared >= 4 and f"Contracts: {declared} kept, 0 broken." in proc.stdout, proc.stdout
