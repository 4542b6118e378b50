"""The command lines: the top floor, above `flows/`.

`cli.main` is the `dataflux` command; the other modules each add their commands to it
(`train`/`generate`, `eval`, `llm serve`, the operations commands). Nothing below this package
imports it.
"""
