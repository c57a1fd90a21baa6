"""How labels are made from a scan (`AnatomyOptions`, the one home of every default of the method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import AnatomyError


@dataclass
class AnatomyOptions:
    """Registration and mixture-model settings; the command line and the painter take their defaults from here."""

    # Registration runs on a copy of the scan no finer than this (mm per axis): cost is then the same
    # for a 1 mm and a 2 mm scan. The atlas shipped with the demo model is 2 mm.
    working_spacing_mm: float = 2.0
    # Demons on the scan made atlas-like (fast: seconds); a B-spline on mutual information is the
    # alternative (no tissue model in the loop, but minutes on two cores).
    deformable: Literal["demons", "bspline", "none"] = "demons"
    demons_iterations: int = 40  # at the working spacing (twice as many at twice the spacing)
    # Gaussian smoothing of the demons field, in voxels of each level (issue 35 protocol, warped atlas alone at 2 and
    # 4 mm std: 1.0 gave 0.837 / 0.770 mean tissue Dice, 1.5 gave 0.829 / 0.734)
    demons_smoothing_voxels: float = 1.0
    bspline_grid_mm: float = 24.0  # control-point spacing of the B-spline
    similarity_iterations: int = 100  # per level
    affine_iterations: int = 100  # per level
    bspline_iterations: int = 30  # per level
    sampling_fraction: float = 0.15  # of the fixed (scan) voxels the metric samples
    histogram_bins: int = 32  # Mattes mutual information
    # Mixture model: iterations; the smoothing of the atlas's one-hot labels that makes the spatial prior
    # (0: none; they are still interpolated linearly, which gives partial-volume priors; smoothing erodes
    # one-voxel sulci: on the deformed template, 1 mm cost 0.07 Dice); the floor of that prior inside the
    # brain (how far intensities may overrule the atlas's tissue); the bias field's smoothness; a Potts term;
    # and the weight of the intensity likelihood against the prior (on a deformed, biased, noisy template, an early
    # version of benchmarks/anatomy_accuracy.py: mean tissue Dice 0.854 at 1, 0.872 at 0.5, both unsmoothed).
    mixture: bool = True
    # The first fit (on the affine-registered atlas, for the demons target and the brain extraction) smooths the
    # atlas's one-hot labels by this much, so the scan's intensities can move the brain's border past the atlas's
    # (issue 35 protocol, seed 0, warped atlas alone at 2 / 4 mm std: 0 mm 0.780 / 0.646, 2 mm 0.827 / 0.533,
    # 4 mm 0.829 / 0.734, 6 mm 0.828 / 0.741).
    first_prior_sigma_mm: float = 4.0
    em_iterations: int = 12
    prior_sigma_mm: float = 0.0
    prior_floor: float = 0.02
    bias_sigma_mm: float = 30.0
    # Potts neighbour term of the final fit (0: none). Issue 35 protocol, seed 0, after the demons above, mean tissue
    # Dice at 1 / 2 / 4 mm std for (likelihood weight, floor, Potts): (0.5, 0.02, 0) 0.855 / 0.847 / 0.820;
    # (0.5, 0.02, 0.5) 0.855 / 0.847 / 0.819; (1.0, 0.1, 1.0) 0.820 / 0.816 / 0.824; (1.0, 0.02, 0) 0.833 / 0.830 /
    # 0.825; (0.3, 0.02, 0) 0.863 / 0.850 / 0.811; (0.2, 0.02, 0) 0.866 / 0.850 / 0.802. Trusting intensities more
    # helps only where the registration is worst (the template's thin sulcal CSF is not visible in its intensities).
    mrf_strength: float = 0.0
    likelihood_weight: float = 0.5  # < 1 trusts the atlas more against the scan's intensities
    seed: int = 0  # metric sampling: the same scan gives the same labels

    def check(self) -> None:
        if not 0.5 <= self.working_spacing_mm <= 8:
            raise AnatomyError(f"working spacing must be between 0.5 and 8 mm, got {self.working_spacing_mm}")
        if self.deformable not in ("demons", "bspline", "none"):
            raise AnatomyError(f"deformable must be 'demons', 'bspline' or 'none', got {self.deformable!r}")
        if not 0 < self.sampling_fraction <= 1:
            raise AnatomyError(f"sampling fraction must be in (0, 1], got {self.sampling_fraction}")
        if self.bspline_grid_mm < 4:
            raise AnatomyError(f"B-spline control points must be at least 4 mm apart, got {self.bspline_grid_mm}")
        for name in (
            "similarity_iterations",
            "affine_iterations",
            "bspline_iterations",
            "demons_iterations",
            "em_iterations",
        ):
            if getattr(self, name) < 0:
                raise AnatomyError(f"{name.replace('_', ' ')} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.prior_floor < 0.25 or self.prior_sigma_mm < 0 or self.bias_sigma_mm <= 0:
            raise AnatomyError("prior floor must be in [0, 0.25), prior smoothing 0 or more, bias smoothing positive")
        if not 0 < self.likelihood_weight <= 1 or self.mrf_strength < 0:
            raise AnatomyError("likelihood weight must be in (0, 1] and the Potts strength 0 or more")
