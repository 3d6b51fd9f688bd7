"""Console entry points (``lit-tricks-train``, ``lit-tricks-report``, ``lit-tricks-ensemble``, ``lit-tricks-curves``).

Each module's ``main`` holds the command's logic; ``scripts/*.py`` are thin wrappers around them.
"""
