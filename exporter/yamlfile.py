"""The YAML loader of the config file and the web config file: plain types, no repeated keys,
and error messages that never quote the line (which may hold a secret)."""

from __future__ import annotations

import yaml

from exporter.model import read_regular_file

MAX_DEPTH = 32
"""Nesting levels a config file may have (ours need four): PyYAML composes nodes
recursively, so a file nested a thousand levels deep would end the process in a
RecursionError instead of a message."""
MAX_SIZE = 4 * 1024 * 1024
"""Bytes a config file may have (a thousand mandants take about 300 KiB)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: PyYAML would
    keep the last value silently, and a repeated key is a mistake, never an intent. Used for
    the config file and the web config file; the error names the line and key, never a value.
    Nesting is bounded by :data:`MAX_DEPTH`.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels; a config file needs a few",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        """PyYAML's, but a scalar Python cannot hold (an integer of more than 4,300 digits, a
        date that does not exist) is a YAMLError with its line, not a ValueError."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a value that cannot be read: too many digits, or a date that does not exist",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # merge keys may repeat keys on purpose; complex keys are refused later
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key]}); give each key once",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: str) -> object:
    """The YAML document in the file ``path``, with plain types only and no repeated keys.
    Raises OSError (it cannot be read, or is no regular file), UnicodeDecodeError (not UTF-8)
    and YAMLError (larger than :data:`MAX_SIZE`, nested deeper than :data:`MAX_DEPTH`, or not
    valid YAML)."""
    try:
        content = read_regular_file(path, MAX_SIZE)
    except ValueError:
        raise yaml.YAMLError(
            f"larger than {MAX_SIZE // (1024 * 1024)} MiB; a config file needs a few KiB"
        ) from None
    return yaml.load(content.decode("utf-8"), Loader=UniqueKeyLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line (which may hold a secret)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}{error.problem or error.context}"
    if isinstance(error, yaml.reader.ReaderError):
        return f"character {error.position + 1}: {error.reason}"
    return str(error) or type(error).__name__
