"""The MedGen Slicer module's helpers that need Slicer (qt, ctk, vtk, slicer): the panel's parts and the
logic's node handling. MedGen.py assembles them into its Widget and Logic classes.

- panel: small Qt pieces (collapsible forms, node selectors, spin boxes, a wait cursor).
- settings_section: the Settings box (executable, model list check, worker, device).
- segment_table: the segment-to-class table.
- run_controls: the Sampling and Run boxes (options, Generate / Inpaint / Cancel, progress, status).
- nodes: hidden temporary nodes, segments as arrays on the scan's grid, writing inputs, loading results.

What runs without Slicer is in MedGenLib, which is tested in napari-medgen's CI; this package is tested
in Slicer by MedGenTest.
"""
