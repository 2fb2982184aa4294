"""YAML from files and flags the user did not necessarily write: safe constructors only, and bounded.

`yaml.safe_load` builds no objects, but an alias-laden document (a "billion laughs") expands to
millions of values once anything walks it (validation, copies, flattening): seconds and gigabytes
for a few hundred bytes. `load_yaml` measures the document as it would expand before building it
and refuses one past the bounds, naming where it came from.
"""

from __future__ import annotations

import yaml

from cxrcommon.errors import UserError

MAX_YAML_CHARS = 2_000_000
MAX_YAML_VALUES = 200_000  # scalars, lists and mappings once every alias is expanded


class YamlError(UserError):
    """A YAML document that is invalid or too large; the message names its source."""


def load_yaml(text: str, where: str):
    """The document in `text` (None when empty); `where` names it in errors (a file, a flag)."""
    if len(text) > MAX_YAML_CHARS:
        raise YamlError(f"{where}: {len(text):,} characters of YAML, more than the {MAX_YAML_CHARS:,} accepted")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            expanded = _expanded_size(node, {}, set())
        except RecursionError:
            raise YamlError(f"{where}: a YAML alias refers to a node that contains it (a recursive document), "
                            "or the document nests too deep") from None
        if expanded > MAX_YAML_VALUES:
            raise YamlError(f"{where}: its aliases expand to more than {MAX_YAML_VALUES:,} values "
                            "(refused: a document this large is a mistake or an attack)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(f"{where} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values under `node` with aliases expanded; shared nodes are measured once (memoised), so
    this costs the document's length, not its expansion."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise RecursionError
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_VALUES:
            break
    open_nodes.discard(key)
    sizes[key] = total
    return total
