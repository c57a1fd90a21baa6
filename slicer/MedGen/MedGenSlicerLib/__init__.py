"""The MedGen Slicer module's helpers that need Slicer. MedGen.py assembles them into its Widget, Logic and
Test classes.

The panel needs the Slicer application (qt, ctk, slicer.app):
- panel: small Qt pieces (collapsible forms, node selectors, spin boxes, a wait cursor).
- settings_section: the Settings box (executable, model list check, worker, device).
- inputs_section: the Inputs box (scan, anatomy, model, following the anatomy's segments).
- segment_table: the segment-to-class table.
- conditions_section: the Conditions box (a model's context attributes and modality, where it has them).
- run_controls: the Sampling and Run boxes (options, Generate / Inpaint / Cancel, progress, status).

The data work needs only Slicer's core libraries (MRML, the segmentations logic's static functions,
slicer.util's array helpers, vtk) and takes the scene as an argument (the module passes slicer.mrmlScene),
so napari-medgen's CI runs it on the `slicer-core` wheel (tests/test_slicer_scene.py):
- nodes: hidden temporary nodes and their removal, writing and reading volumes, loading a result.
- segments: segments as arrays on the scan's grid, the label map by class, the region, label map import.
- jobs: a run from the scene's nodes to new volumes (start, load all or none, clean up).
- scenario: the check MedGenTest runs in Slicer and the CI runs on the wheel.

What runs without Slicer at all is in MedGenLib.
"""
