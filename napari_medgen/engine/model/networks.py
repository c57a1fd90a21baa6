"""MONAI networks built from a card (allow-listed classes only), and how MONAI is imported.

`import monai` runs MONAI's package __init__, which imports every sub-package (apps, data, transforms,
metrics, losses, bundle, ...) and, through their eager `optional_import`s, matplotlib, pandas,
scikit-learn, scikit-image, nibabel and scipy.signal: measured 2.9-5 CPU-seconds on this project's
2-core CPU (benchmarks/startup.py), against about 1 s for the MONAI modules a network run needs.
`monai_module` can import just those ("lean"): a process that only synthesizes (the command line's
generate / inpaint / serve) asks for it with `use_lean_monai_import()`; a library user gets MONAI as
`import monai` gives it, unless $NAPARI_MEDGEN_MONAI_IMPORT says "lean" (or "full", which wins over
the command line's choice).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

from ..errors import ModelCardError
from .card import ModelCard

if TYPE_CHECKING:
    import torch

MONAI_IMPORT_ENV = "NAPARI_MEDGEN_MONAI_IMPORT"

# Optional dependencies of MONAI's data / transforms / utils / metrics modules that its sub-packages
# import at module level and a network run never uses (measured with python -X importtime: scipy.signal
# and scipy.sparse from monai.data.ultrasound_confidence_map, matplotlib.pyplot and pandas from
# monai.utils, skimage from monai.transforms.utils, nibabel (and pydicom, PIL) from monai.data, sklearn
# from monai.metrics). During a lean import they look absent to MONAI, which binds a placeholder that
# raises if used; after it they import normally for everyone else.
_NOT_FOR_NETWORKS = (
    "matplotlib", "pandas", "sklearn", "skimage", "nibabel", "pydicom", "PIL", "h5py", "tifffile",
    "scipy.signal", "scipy.sparse",
)

_lean_requested = False
_lock = threading.RLock()


def use_lean_monai_import(lean: bool = True) -> None:
    """Ask for MONAI's lean import in this process (its MONAI modules then lack the optional
    dependencies above): for processes that only run networks, such as the command line's."""
    global _lean_requested
    _lean_requested = lean


def monai_import_mode() -> str:
    """'lean' or 'full': the environment variable's word, else what this process asked for."""
    mode = os.environ.get(MONAI_IMPORT_ENV, "").strip().lower()
    if mode in ("lean", "full"):
        return mode
    return "lean" if _lean_requested else "full"


def monai_module(name: str) -> types.ModuleType:
    """Import a MONAI module ('monai.networks.nets', 'monai.networks.schedulers', 'monai.inferers'),
    leanly where asked (see the module's docstring); any failure of the lean way falls back to MONAI's own."""
    if not name.startswith("monai"):
        raise ValueError(f"not a MONAI module: {name}")
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        if monai_import_mode() == "lean" and _lean_import(name):
            return sys.modules[name]
        return importlib.import_module(name)


class _PartialMonai(types.ModuleType):
    """`monai` whose package __init__ did not run: its sub-packages import when first used."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        try:
            return importlib.import_module(f"monai.{attribute}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'monai' has no attribute {attribute!r}") from None


def _lean_import(name: str) -> bool:
    """Import `name` without MONAI's package __init__ and its optional heavy dependencies; False (and
    nothing of the attempt left in sys.modules) where this MONAI does not allow it."""
    before = {key for key in sys.modules if key == "monai" or key.startswith("monai.")}
    blocked = [dependency for dependency in _NOT_FOR_NETWORKS if dependency not in sys.modules]
    try:
        if "monai" not in sys.modules:
            spec = importlib.util.find_spec("monai")
            if spec is None or not spec.submodule_search_locations:
                return False
            partial = _PartialMonai("monai", "MONAI (imported without its package __init__ by napari-medgen)")
            partial.__spec__, partial.__loader__, partial.__file__ = spec, spec.loader, spec.origin
            partial.__path__ = list(spec.submodule_search_locations)
            partial.__package__ = "monai"
            sys.modules["monai"] = partial
            from monai._version import get_versions

            version = get_versions()
            partial.__version__ = str(version.get("version", "0+unknown"))
            partial.__revision_id__ = str(version.get("full-revisionid") or "")
            partial.__basedir__ = partial.__path__[0]
        for dependency in blocked:
            sys.modules[dependency] = None  # type: ignore[assignment]  # "not installed", for this import only
        # MONAI's sub-packages import each other in cycles that resolve only in its own __init__'s
        # order, which starts with monai.apps; networks come after it.
        importlib.import_module("monai.apps")
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - another MONAI version: undo the attempt, import it MONAI's way
        for key in [k for k in sys.modules if (k == "monai" or k.startswith("monai.")) and k not in before]:
            del sys.modules[key]
        return False
    finally:
        for dependency in blocked:
            if sys.modules.get(dependency, False) is None:
                del sys.modules[dependency]


# -- networks -------------------------------------------------------------------------------------
def build_networks(card: ModelCard, device: str | torch.device | None = None) -> dict[str, torch.nn.Module]:
    """The card's MONAI networks with fresh (random) weights; on `device` if given ('meta': shapes only,
    no memory, to check a card against its weights before building anything large)."""
    import contextlib

    import torch

    specs = {"network": card.network}
    if card.controlnet is not None:
        specs["controlnet"] = card.controlnet
    if card.autoencoder is not None:
        specs["autoencoder"] = card.autoencoder
    networks = {}
    for role, spec in specs.items():
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                networks[role] = network_class(spec.class_name)(**spec.kwargs)
        except MemoryError:
            raise ModelCardError(
                f"model {card.name}: the card's {role} is too large to build in this machine's memory; check its "
                f"{role}.kwargs (channels)"
            ) from None
        except Exception as error:  # noqa: BLE001 - whatever MONAI's constructor raises on these arguments
            # The schema cannot know every constraint of MONAI's constructors (e.g. channels that
            # norm_num_groups must divide, or a zero that it divides by): a card MONAI refuses is still
            # the card's fault.
            raise ModelCardError(
                f"model {card.name}: the card's {role} arguments are not accepted by MONAI's "
                f"{spec.class_name} ({type(error).__name__}: {str(error)[:300]}); fix the card's {role}.kwargs"
            ) from None
    return networks


def network_class(class_name: str) -> type:
    """The MONAI class of an allow-listed name: MAISI's from monai.apps.generation.maisi.networks, the
    rest from monai.networks.nets (the card's validators refuse any other name before this is reached)."""
    from .card_sections import ALLOWED_AUTOENCODERS, ALLOWED_CONTROLNETS, ALLOWED_NETWORKS, MAISI_NETWORKS

    if class_name not in ALLOWED_NETWORKS + ALLOWED_CONTROLNETS + ALLOWED_AUTOENCODERS:
        raise ModelCardError(f"network class {class_name!r} is not allowed")
    if class_name in MAISI_NETWORKS:
        module = {
            "AutoencoderKlMaisi": "autoencoderkl_maisi",
            "ControlNetMaisi": "controlnet_maisi",
            "DiffusionModelUNetMaisi": "diffusion_model_unet_maisi",
        }[class_name]
        return getattr(monai_module(f"monai.apps.generation.maisi.networks.{module}"), class_name)
    return getattr(monai_module("monai.networks.nets"), class_name)
