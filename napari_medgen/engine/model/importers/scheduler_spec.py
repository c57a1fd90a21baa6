"""A config's noise scheduler section -> the card's scheduler, with MONAI's own defaults where it states none.

A bundle that writes only ``num_train_timesteps`` (mednist_ddpm) runs with MONAI's DDPMScheduler defaults
(``linear_beta`` from 1e-4 to 2e-2, epsilon prediction); those are read from MONAI's signatures here, never
assumed, so the card states what the bundle's own run would use. MONAI GenerativeModels' spelling
``beta_schedule: scaled_linear`` is the same schedule as MONAI's ``scaled_linear_beta``. A bundle-local scheduler
class (maisi_ct_generative 1.0.0's ``scripts.rectified_flow.RFlowScheduler``) is taken as MONAI's class of that
name only when every argument it is given is one of MONAI's class's arguments.
"""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import ModelCardError

# MONAI GenerativeModels' `beta_schedule` names -> MONAI's `schedule` names.
_OLD_SCHEDULE_NAMES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta", "sigmoid": "sigmoid_beta", "cosine": "cosine"}
_RFLOW_KEYS = ("use_discrete_timesteps", "use_timestep_transform", "base_img_size_numel", "transform_scale")


def _monai_defaults(class_name: str) -> dict[str, Any]:
    """The keyword defaults of MONAI's scheduler class `class_name` (its constructor's signature)."""
    from monai.networks import schedulers

    signature = inspect.signature(getattr(schedulers, class_name).__init__)
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _schedule_defaults(schedule: str) -> dict[str, Any]:
    from monai.networks.schedulers.scheduler import NoiseSchedules

    signature = inspect.signature(NoiseSchedules[schedule])
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def check_local_scheduler(target: str, class_name: str, kwargs: dict[str, Any], where: str) -> None:
    """Refuse a bundle-local scheduler whose arguments MONAI's class of the same name does not take."""
    known = set(_monai_defaults(class_name)) | {"schedule_args"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ModelCardError(
            f"'{where}' names the bundle's own scheduler {target!r} with arguments MONAI's {class_name} does not take "
            f"({', '.join(unknown)}): its sampling cannot be reproduced with MONAI's; nothing of the bundle's code is run"
        )


def scheduler_spec(class_name: str, kwargs: dict[str, Any], trained_steps: float | None = None) -> dict[str, Any]:
    """The card's `scheduler` for a config's section: every value stated, MONAI's default where the config has none
    (the checkpoint's own `num_train_timesteps`, where it holds one, is the truth)."""
    defaults = _monai_defaults(class_name)
    steps = int(trained_steps if trained_steps is not None else kwargs.get("num_train_timesteps", defaults.get("num_train_timesteps", 1000)))
    spec: dict[str, Any] = {"class_name": class_name, "num_train_timesteps": steps}
    if class_name == "RFlowScheduler":
        spec["prediction_type"] = "v_prediction"
        for key in _RFLOW_KEYS:
            spec[key] = kwargs.get(key, defaults[key])
        return spec
    schedule = kwargs.get("schedule")
    if schedule is None and "beta_schedule" in kwargs:
        schedule = _OLD_SCHEDULE_NAMES.get(str(kwargs["beta_schedule"]))
        if schedule is None:
            raise ModelCardError(f"scheduler beta_schedule {kwargs['beta_schedule']!r} is not one MONAI knows")
    spec["schedule"] = schedule or defaults["schedule"]
    schedule_defaults = _schedule_defaults(spec["schedule"])
    for key in ("beta_start", "beta_end"):
        if key in kwargs or key in schedule_defaults:
            spec[key] = kwargs.get(key, schedule_defaults.get(key))
    spec["prediction_type"] = kwargs.get("prediction_type", defaults["prediction_type"])
    return spec
