"""Parse ``swanctl --list-sas --pretty`` into dicts shaped like vici's list-sa messages.

The pretty format is line based (``name {``, ``key = value``, ``key = [`` items ``]``, ``}``),
so values containing spaces (e.g. distinguished-name ids) stay intact.
"""

from __future__ import annotations


class ListSasParseError(ValueError):
    """swanctl output that does not have the expected shape."""


def parse_vici_pretty(text: str) -> list[tuple[str, dict]]:
    """Top-level messages as (header, body), e.g. ('list-sa event', {...})."""
    messages: list[tuple[str, dict]] = []
    stack: list[dict] = []
    current_list: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if current_list is not None:
            if line == "]":
                current_list = None
            else:
                current_list.append(line)
        elif line.endswith("{"):
            section: dict = {}
            name = line[:-1].strip()
            if stack:
                stack[-1][name] = section
            else:
                messages.append((name, section))
            stack.append(section)
        elif line == "}":
            if not stack:
                raise ListSasParseError(f"line {number}: unbalanced '}}'")
            stack.pop()
        elif " = " in line or line.endswith(" ="):
            key, _, value = line.partition(" =")
            value = value.strip()
            if not stack:
                raise ListSasParseError(f"line {number}: key outside a section: {line!r}")
            if value == "[":
                current_list = stack[-1][key.strip()] = []
            else:
                stack[-1][key.strip()] = value
        else:
            raise ListSasParseError(f"line {number}: unexpected {line!r}")
    if stack or current_list is not None:
        raise ListSasParseError("output ended inside a section")
    return messages


def parse_list_sas(text: str) -> list[dict]:
    """One dict per IKE SA, with 'name' (the connection) added; 'child-sas' maps to dicts."""
    sas = []
    for header, body in parse_vici_pretty(text):
        if header != "list-sa event":
            continue
        for name, sa in body.items():
            sas.append({"name": name, **sa})
    return sas
