"""Recipes: each composes components into one command and reads top to bottom.
Nothing outside this folder and ``cli.py`` imports from it."""
