"""Ablation grids (`grid.py`) and their collation into tables and plots (`collate.py`)."""
