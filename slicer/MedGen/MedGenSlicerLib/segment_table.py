"""The segment-to-class table of the MedGen panel: one row per segment, with a combo box of the model's
classes preset by name (MedGenLib.label_names). Needs Slicer's Python (qt)."""

import qt
from MedGenLib import label_names

IGNORE_TEXT = "(leave out)"


class SegmentTable:
    """The table widget (`table`) and the assignment it shows: {segment name: class index or IGNORE}."""

    def __init__(self) -> None:
        self.table = qt.QTableWidget()
        self.table.setColumnCount(2)
        self.table.setHorizontalHeaderLabels(["Segment", "Model class"])
        self.table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.table.verticalHeader().visible = False
        self.table.toolTip = "Segments are matched to the model's classes by name; change any here"

    def fill(self, names: list[str], classes: list[tuple[int, str]]) -> None:
        """One row per segment: its name and a class of the model, preset by name."""
        preset = label_names.default_assignment(names, classes)
        self.table.setRowCount(len(names))
        for row, name in enumerate(names):
            item = qt.QTableWidgetItem(name)
            item.setFlags(qt.Qt.ItemIsEnabled)
            self.table.setItem(row, 0, item)
            combo = qt.QComboBox()
            combo.addItem(IGNORE_TEXT)
            for index, className in classes:
                combo.addItem(f"{index}: {className}")
            if preset[name] != label_names.IGNORE:
                combo.currentIndex = 1 + [index for index, _ in classes].index(preset[name])
            self.table.setCellWidget(row, 1, combo)

    def assignment(self, classes: list[tuple[int, str]]) -> dict[str, int]:
        """{segment name: class index or IGNORE} as set in the table (`classes`: those it was filled with)."""
        assignment = {}
        for row in range(self.table.rowCount):
            name = self.table.item(row, 0).text()
            choice = self.table.cellWidget(row, 1).currentIndex
            assignment[name] = classes[choice - 1][0] if choice > 0 else label_names.IGNORE
        return assignment
