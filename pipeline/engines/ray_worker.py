"""What every Ray worker of a simulation imports before it accepts work (Ray's ``preload_python_modules``).

Importing this module sets the process up as a simulated hospital's
(:func:`pipeline.reporting.logs.setup_hospital_process`: library noise silenced, Ctrl-C left to the
driver) and then imports what a hospital's first message needs (Flower's client side, torch, MONAI,
Opacus, TenSEAL). Ray starts its workers as soon as it starts, so these imports run while the driver
is still checking the data and planning the budgets, instead of after the first message arrives.
"""

from __future__ import annotations

from pipeline.reporting.logs import setup_hospital_process

setup_hospital_process()

import pipeline.flower.client_app  # noqa: E402, F401
import pipeline.flower.hospital  # noqa: E402, F401
import pipeline.secagg.codec  # noqa: E402, F401  (TenSEAL)
import pipeline.secagg.protocol  # noqa: E402, F401
from pipeline.heap import freeze_heap, quick_exit  # noqa: E402

freeze_heap()  # what was imported stays out of the collector's passes (pipeline.heap)
quick_exit()
