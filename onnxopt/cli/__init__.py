"""The command-line interface: click only, one module per command, no graph code here."""
