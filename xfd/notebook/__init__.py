"""Notebook rendering: progress widgets and rich reprs, with a tqdm/text fallback."""
