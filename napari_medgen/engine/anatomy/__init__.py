"""Labels from a scan: the model's atlas registered to the scan (SimpleITK), refined by a mixture model.

Front ends call ``labels_from_scan(scan, model)``, a generator of progress events (step of 100) that
returns the label map on the scan's exact grid (``segment_scan`` returns the tissue fractions too), and close
it to cancel. ``atlas_for(card)`` says which
atlas a model uses.

How (defaults in `AnatomyOptions`):

1. The scan on a working grid no finer than 2 mm, intensities clipped to its 0.5-99.5th percentiles; its
   head mask (Otsu, largest part, closed, holes filled).
2. Placement: the atlas brain's centre tried at three places in the head (the head mask's centre; under
   the top of the head by the atlas's centre-to-vertex distance; 12 mm further down for skull and scalp),
   each refined by a short similarity registration at 8 mm; the best metric wins.
3. Similarity (8, 4 mm) then affine (4, 2 mm) registration, Mattes mutual information on a seeded random
   15 % of the voxels, regular-step gradient descent.
4. A first mixture fit (below) on the working grid, its prior the affine-warped atlas smoothed by 4 mm (so the
   scan's intensities can move the brain's border and the tissues past the atlas's): it gives the brain
   extraction (each voxel's probability of brain), the bias field and the tissues' intensity order. The
   bias-corrected scan, its intensities mapped onto the atlas's by quantiles inside the brain (rising for a T1,
   falling for a T2), weighted by the brain probability, is the image that symmetric-forces demons (4 then 2 mm,
   field smoothed by 1 voxel) registers the atlas to (`target.atlas_like`). A contrast with another tissue order
   falls back to the tissue posteriors painted with the atlas's means. (A B-spline on mutual information is the
   alternative: minutes.)
5. The atlas's one-hot labels warped (linear: partial-volume priors) onto a box of the scan's own grid
   around the brain; EM for a Gaussian mixture on the log-intensities with those priors, a bias field
   (smoothed residual, 30 mm) and the likelihood weighted 0.5 against the prior; the most probable class
   per voxel; brain islands outside the largest connected brain removed. The posteriors are the tissue
   fractions `segment_scan(..., fractions=True)` returns.
6. The fit is checked (`fit_check`): how much of the scan's intensity variance the warped atlas's tissues
   explain, relative to the atlas's own, and how much of the warped brain lies in the head. A poor fit is said
   in one line (the last event's notice, the result's ``anatomy.warning``); the labels are returned all the same.

Measured on issue 35's protocol (`benchmarks/anatomy_accuracy.py`, docs/models.md "Labels from your own scan"),
beside ANTs SyN on the same cases.

Brain extraction is step 4's brain probability for the registration, then the warped atlas brain, whose border
the final mixture model may move by about a voxel; the non-brain class is a three-Gaussian mixture (dark skull
and air, mid-grey muscle and dura, bright fat), so skull, scalp and neck are not forced into a tissue class.
Where it fails:

- a wrong orientation header (the placement takes +z as superior): the atlas is placed upside down or
  sideways and registration does not recover;
- a scan holding only part of the brain (a slab, a cropped field of view): the whole-brain atlas is
  pulled into it; the result's metadata and last event then say the brain is implausibly large or small;
- very coarse scans (5 mm and more) and the nibabel/dipy test volumes: the atlas's cortex is wider than
  what the scan shows; expect labels good to a voxel or two at best;
- anatomy the atlas lacks (large lesions, resection cavities, big ventricles of hydrocephalus): labelled
  as the nearest atlas tissue; the painter is there to correct them;
- thin dark structures next to dark skull (outer CSF against bone in T1): intensities cannot tell them
  apart, so the atlas's border decides.
"""

from .api import ScanSegmentation, labels_from_scan, segment_scan
from .atlas import Atlas, atlas_for
from .errors import AnatomyError, NoAtlasError
from .options import AnatomyOptions

__all__ = [
    "AnatomyError",
    "AnatomyOptions",
    "Atlas",
    "NoAtlasError",
    "ScanSegmentation",
    "atlas_for",
    "labels_from_scan",
    "segment_scan",
]
