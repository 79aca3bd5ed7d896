"""The table of configuration variables against `Config` and against docs/CONFIGURATION.md."""

import dataclasses
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.config.knobs import KNOBS, PLATFORM_VARIABLES
from smoltbot.config.sections import SECTIONS, Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"


def documented() -> dict[str, str | None]:
    """Each variable with a row in a table of the reference: its default cell, or None in a table without one."""
    rows: dict[str, str | None] = {}
    columns: list[str] = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            columns = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if cells[0] == "variable":
            columns = cells
            continue
        name = re.fullmatch(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        if name and columns:
            rows[name.group(1)] = cells[columns.index("default")] if "default" in columns else None
    return rows


class KnobTableTests(SynchronousTestCase):
    def test_every_field_filled_once(self):
        """Every field of `Config` and its sections is filled by exactly one variable of the table (aliases aside)."""
        plain = [knob.target for knob in KNOBS if knob.alias_for is None]
        targets = [target.rsplit(".", 1)[0] if target.startswith("proxy.upstreams.") else target for target in plain]
        fields = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
        fields += [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
        self.assertEqual(sorted(set(targets)), sorted(fields))
        self.assertEqual(len(plain), len(set(plain)))

    def test_variables_unique(self):
        """No variable is listed twice, nor both as a knob and as set by the platform."""
        names = [knob.variable for knob in KNOBS]
        self.assertEqual(len(names), len(set(names)))
        self.assertFalse(set(names) & set(PLATFORM_VARIABLES))


class ReferenceTests(SynchronousTestCase):
    def test_reference_lists_exactly_the_table(self):
        """docs/CONFIGURATION.md has a row for every variable of the table, and for no other."""
        self.assertEqual(sorted(documented()), sorted(knob.variable for knob in KNOBS))

    def test_defaults_documented(self):
        """Required variables are in the table without defaults; every other row begins its default cell with the table's default."""
        rows = documented()
        for knob in KNOBS:
            cell = rows.get(knob.variable)
            if knob.required:
                self.assertIsNone(cell, f"{knob.variable} is required: list it under Required")
            else:
                self.assertIsNotNone(cell, f"{knob.variable} needs a default")
                self.assertTrue(cell.startswith(knob.default_text), f"{knob.variable}: documented {cell}, the table says {knob.default_text}")

    def test_platform_variables_named(self):
        """The variables the platform sets are named in the reference too."""
        text = DOC.read_text()
        for name in PLATFORM_VARIABLES:
            self.assertIn(f"`{name}`", text)
