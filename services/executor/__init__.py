"""The executor: runs one attempt of one node in a runtime and reports the result."""
