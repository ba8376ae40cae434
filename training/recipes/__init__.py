"""Recipes that rebuild the checkpoints this project ships."""
