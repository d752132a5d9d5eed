"""The run configuration: typed schemas, validation, composition and path keys.

Owns: what a valid experiment config is (:mod:`.schema` types, :mod:`.validate` ranges and
cross-group rules), how one is composed outside ``hydra.main`` (:mod:`.compose`), which keys
are paths (:mod:`.paths`) and how a run is resumed with its saved config (:mod:`.resume`).
Defaults live in one place: the YAML files under ``conf/``; the schemas hold types only.

Imports nothing from the other rooms of :mod:`pipeline` except :mod:`pipeline.errors` and the
pure parameter rules of :mod:`pipeline.secagg.params`.
"""

from pipeline.config.compose import compose, conf_dir
from pipeline.config.validate import complete, validate

__all__ = ["complete", "compose", "conf_dir", "validate"]
