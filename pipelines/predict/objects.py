"""Moved to ``pipelines.core.objects`` (object code lives once, in pure numpy, under
pipelines/core); this name stays for the modules that still import it from here."""
from pipelines.core.objects import (  # noqa: F401
    EDGES,
    FIELDS,
    UnionFind,
    block_objects,
    faces_of,
    label_table,
    merge_objects,
    object_id,
)
