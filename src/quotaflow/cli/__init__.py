"""The `quotaflow` command-line tool."""
