"""Prefect flows and tasks: the only code that knows about files, stages and Prefect."""

# Prefect reads its settings and logging config when first imported: set aeflow's defaults before that.
from flows import settings as _settings  # noqa: F401
