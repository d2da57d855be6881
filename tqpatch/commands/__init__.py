"""One module per `tqpatch` subcommand; each exposes a click `command`."""
