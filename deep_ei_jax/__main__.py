"""`python -m deep_ei_jax`: the deep-ei-jax command line (see deep_ei_jax.cli)."""
from .cli import console_main

raise SystemExit(console_main())
