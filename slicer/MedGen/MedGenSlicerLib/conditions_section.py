"""The Conditions box of the MedGen panel, for models that take them: a spin box per context attribute (the
brain LDM's sex, age, ventricular and brain volume; name, unit, range and default from the model's card) and
the modality by name (NV-Generate-MR's T1, T2, FLAIR, ...). Hidden for other models. Needs Slicer's Python (qt)."""

import qt

from .panel import collapsibleForm


class ConditionsSection:
    """The conditions of the picked model; `values()` gives them as a run's `attributes` and `modality` options."""

    def __init__(self, layout) -> None:
        self.box, self.form = collapsibleForm(layout, "Conditions")
        self.attributeSpins = {}
        self.modalityCombo = None
        self.box.visible = False

    def showModel(self, model) -> None:
        """Controls for `model` (a MedGenLib.models.ModelInfo or None), each at the card's default."""
        while self.form.rowCount() > 0:
            self.form.removeRow(0)
        self.attributeSpins, self.modalityCombo = {}, None
        for attribute in model.attributes if model is not None else []:
            spin = qt.QDoubleSpinBox()
            spin.decimals = 3
            spin.setRange(attribute.minimum, attribute.maximum)
            spin.singleStep = (attribute.maximum - attribute.minimum) / 100.0
            spin.value = attribute.default
            spin.toolTip = (f"{attribute.name}: {attribute.minimum:g} to {attribute.maximum:g}, the model's default "
                            f"{attribute.default:g}")
            self.form.addRow(attribute.text + ":", spin)
            self.attributeSpins[attribute.name] = spin
        if model is not None and model.modalities:
            self.modalityCombo = qt.QComboBox()
            self.modalityCombo.addItems(model.modalities)
            if model.default_modality in model.modalities:
                self.modalityCombo.setCurrentIndex(model.modalities.index(model.default_modality))
            self.modalityCombo.toolTip = "The modality the model makes (its card's own by default)"
            self.form.addRow("Modality:", self.modalityCombo)
        self.box.visible = bool(self.attributeSpins or self.modalityCombo is not None)

    def values(self) -> dict:
        """{'attributes': {name: value} or None, 'modality': name or None}, as MedGenLogic.start's options take them."""
        attributes = {name: float(spin.value) for name, spin in self.attributeSpins.items()}
        modality = self.modalityCombo.currentText if self.modalityCombo is not None else None
        return {"attributes": attributes or None, "modality": modality}
