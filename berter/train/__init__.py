"""Training: the loop (run), SMART (smart), weight averaging (averaging), the command line (cli)."""
