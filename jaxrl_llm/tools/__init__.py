"""Command-line tools above the library (top layer: they may import any package).

python -m jaxrl_llm.tools.plan        # bytes per device and step time of a mesh, on paper
"""
