"""Artifact folders: write (goldens, manifest), validate (verify artifact), preflight, checks, identity."""
