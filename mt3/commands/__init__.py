"""One module per `mt3` subcommand. Each defines `add_arguments(parser)` and `main(args) -> int` and stays thin:
parse, then call one library function. Commands that take gin define `--gin_file` (append) and `--gin_bindings`
(append); `mt3.cli` folds `--gin.NAME=VALUE` into `args.gin_bindings`."""
