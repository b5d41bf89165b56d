"""Kit that every NeuroTwin package shares and that imports none of them: the command line's user errors and
output checks. A leaf: it imports nothing of the project."""
