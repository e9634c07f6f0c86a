"""``python -m layerdrop.cli``: the command line, as torchrun and accelerate launch run it."""

from layerdrop.cli import main

raise SystemExit(main())
