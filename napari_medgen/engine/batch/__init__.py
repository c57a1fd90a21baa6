"""Batch synthesis of labelled data sets (issue 12): `augment` (seeded label-map transforms), `layout`
(nnU-Net v2's raw layout, dataset.json, complete cases), `cases` (one case: augment, generate, write
atomically), `distributed` (the cases mapped over dask.distributed, or a plain loop).

    from napari_medgen.engine.batch import synthesize_dataset, run_synthesis
    summary = run_synthesis(synthesize_dataset(["labels.nii.gz"], "/data/synth", cases=100, client=my_client))

The names below are imported when first used (no torch or dask import for `import napari_medgen.engine.batch`).
"""

from __future__ import annotations

from ..._lazy import lazy_attributes

_WHERE = {
    "AugmentOptions": "augment",
    "augment_label_map": "augment",
    "CaseSettings": "cases",
    "CaseSpec": "cases",
    "CaseResult": "cases",
    "make_case": "cases",
    "BatchEvent": "distributed",
    "BatchSummary": "distributed",
    "run_synthesis": "distributed",
    "synthesize_dataset": "distributed",
    "case_complete": "layout",
    "dataset_json": "layout",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
