"""The review report of a run: build (every number and figure), review (its typed parts), render (HTML and
Markdown)."""
