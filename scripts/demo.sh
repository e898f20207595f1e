#!/usr/bin/env bash
# Set up (if needed) and run the embedded ground-truth demo. Extra arguments go to `tisdpo demo`
# (e.g. --quick for the 1-minute version, --output_dir DIR; default demo_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tisdpo demo "$@"
