"""One module per `wmpc` sub-command: HELP, add_arguments(parser), run(args) -> int."""
