"""The YAML loader of the config file and the web config file: plain types, no repeated keys,
and error messages that never quote the line (which may hold a secret)."""

from __future__ import annotations

from typing import IO

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: PyYAML would
    keep the last value silently, and a repeated key is a mistake, never an intent. Used for
    the config file and the web config file; the error names the line and key, never a value.
    """

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


def load_yaml(stream: IO[str]) -> object:
    """The YAML document in ``stream``, with plain types only and no repeated keys."""
    return yaml.load(stream, Loader=UniqueKeyLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line (which may hold a secret)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}{error.problem or error.context}"
    return type(error).__name__
