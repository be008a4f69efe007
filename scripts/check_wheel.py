"""Build the wheel and check that it ships what an installed plugin needs: the license, the napari
manifest and the bundled models. Run before a release:

    python scripts/check_wheel.py            # builds into a temporary folder with `pip wheel`
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = (
    "napari_detection_qc/napari.yaml",
    "napari_detection_qc/models/default_detector.pt",
    "napari_detection_qc/models/default_forest.skops",
    "napari_detection_qc/models/li2025_forest.skops",
)


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, str(ROOT)], check=True
        )
        (wheel,) = Path(out).glob("*.whl")
        names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if ".dist-info/licenses/" in n and n.endswith("LICENSE")]
    missing = [n for n in REQUIRED if n not in names] + ([] if licenses else ["<dist-info>/licenses/LICENSE"])
    print(f"{wheel.name}: {len(names)} files; license at {licenses[0] if licenses else 'MISSING'}")
    if missing:
        print("missing from the wheel: " + ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
