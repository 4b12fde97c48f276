"""Research scripts: measurements behind docs/results.md and docs/notes/, run from the repository
root as `python -m research.<script>`. Not part of the installed package (see research/README.md)."""
