"""Leave nothing of the machine in a stored baseline run (`make baseline` calls this): the
manifest's cwd, the path the command was started by (`.venv/bin/dialogue-runner` becomes
`dialogue-runner`), the run lock (pid and host name).

Usage: python .ci/scrub_baseline.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def scrub(run_dir: Path) -> None:
    (run_dir / "run.lock").unlink(missing_ok=True)
    path = run_dir / "run.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.pop("cwd", None)
    if manifest.get("command"):
        manifest["command"][0] = "dialogue-runner"
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    scrub(Path(sys.argv[1]))
