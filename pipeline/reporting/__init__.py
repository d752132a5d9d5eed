"""What a run leaves behind: the run folder's files, written so that a crash never corrupts them.

Owns: the atomic and owner-only file writers (:mod:`.atomic`), the run folder's tables and
checkpoint (:mod:`.recorder`), plots (:mod:`.plots`), console lines (:mod:`.console`), provenance
(:mod:`.provenance`) and optional experiment tracking (:mod:`.tracking`).

Imports nothing from the other rooms of :mod:`pipeline` at module level (the provenance asks
:mod:`pipeline.task.data` where a MedMNIST file lies, lazily), so every room may use it.
"""
