"""One module per group of subcommands; each `run_*` function takes the parsed arguments, returns an exit code."""
