"""`python -m pocketdiff.cli ...` (what `accelerate launch -m pocketdiff.cli train STAGE ...` runs on each process)."""

from pocketdiff.cli import main

main()
