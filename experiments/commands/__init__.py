"""One module per `dfly` command; each has `add_parser(subparsers)` and imports its body lazily."""
