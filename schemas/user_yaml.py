"""Reading a YAML file a user wrote (job specs, recipes, training configs): safe loading, a
duplicate key is an error (PyYAML keeps the last one silently), and every failure is a
:class:`ConfigError` naming the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping
)


def parse_yaml(text: str | bytes, source: str) -> object:
    """The data of a YAML document; :class:`ConfigError` naming ``source`` when it is not one."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not a text file (YAML expected)") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


def read_yaml(path: str | Path, what: str) -> object:
    """The data of the YAML file ``path`` (``what`` it should be, for the error if it is
    missing)."""
    path = Path(path)
    if not path.is_file():
        what_it_is = "a directory" if path.is_dir() else "not found"
        raise ConfigError(f"{path}: {what} {what_it_is}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    return parse_yaml(data, str(path))
