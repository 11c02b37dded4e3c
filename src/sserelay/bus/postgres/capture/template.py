"""Channel templates: ``orders`` or ``orders:{customer_id}``, filled from a row's columns.

A template is literal text with ``{column}`` fields; ``{{`` and ``}}`` are literal braces.
A field is replaced by the column's value as PostgreSQL writes it as text (``42``, ``t``,
``2024-05-01``). The result must be a valid channel name (see
:func:`sserelay.channels.validate_channel`); a row for which it is not (a NULL, a value
that makes the name longer than 63 bytes...) raises :class:`RouteError`, which the
capturer counts and reports instead of publishing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ....errors import ConfigError, InvalidChannel, SseRelayError
from ....wire.channels import validate_channel


class RouteError(SseRelayError):
    """A row whose channel cannot be made from the template."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed channel template; ``parts`` alternate literal text and field names."""

    text: str
    literals: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse ``text``; :class:`ConfigError` if its braces do not pair up."""
        if not isinstance(text, str) or not text:
            raise ConfigError("a channel template must be a non-empty string")
        literals: list[str] = []
        fields: list[str] = []
        current: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char in "{}" and text[i + 1 : i + 2] == char:
                current.append(char)
                i += 2
                continue
            if char == "}":
                raise ConfigError(f"channel template {text!r}: '}}' without '{{' (write '}}}}')")
            if char == "{":
                end = text.find("}", i + 1)
                name = text[i + 1 : end] if end > 0 else ""
                if end < 0 or not name or "{" in name:
                    raise ConfigError(f"channel template {text!r}: '{{' without a column name")
                literals.append("".join(current))
                fields.append(name)
                current = []
                i = end + 1
                continue
            current.append(char)
            i += 1
        literals.append("".join(current))
        template = cls(text, tuple(literals), tuple(fields))
        template._check_literals()
        return template

    def _check_literals(self) -> None:
        """A template that can never give a valid name is refused now, not per row."""
        sample = self.literals[0] + "".join(f"x{lit}" for lit in self.literals[1:])
        try:
            validate_channel(sample)
        except InvalidChannel as exc:
            raise ConfigError(f"channel template {self.text!r}: {exc}") from None

    def rename(self, names: Mapping[str, str]) -> Template:
        """The same template with fields renamed (``names``: old -> new; others kept)."""

        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        out = [literal(self.literals[0])]
        for field, text in zip(self.fields, self.literals[1:], strict=True):
            out.append("{" + names.get(field, field) + "}" + literal(text))
        return Template.parse("".join(out))

    @property
    def is_static(self) -> bool:
        return not self.fields

    def render(self, value: Callable[[str], str | None]) -> str:
        """The channel for a row; ``value(field)`` gives a column's text (None: NULL)."""
        if not self.fields:
            return self.literals[0]
        out = [self.literals[0]]
        for name, literal in zip(self.fields, self.literals[1:], strict=True):
            text = value(name)
            if text is None:
                raise RouteError(f"column {name} is NULL")
            out.append(text)
            out.append(literal)
        channel = "".join(out)
        try:
            return validate_channel(channel)
        except InvalidChannel as exc:
            raise RouteError(f"{exc} ({channel[:80]!r})") from None

    def pattern(self) -> str:
        """A PostgreSQL regular expression matching every channel the template can give."""
        escaped = [re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", lit) for lit in self.literals]
        return "^" + "(.+)".join(escaped) + "$"
