"""Repository tools (not installed): make_recipes.py writes configs/, make_results.py writes the
results tables from docs/records. Run them as scripts from the repository root."""
