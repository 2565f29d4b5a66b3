"""The verbs behind the command line, one function each (cli.py parses and dispatches)."""
