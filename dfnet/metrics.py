"""Prometheus metrics in the text exposition format, with no client library.

Names follow Dragonfly's (`dragonfly_dfdaemon_*`, `dragonfly_scheduler_*`) so dashboards built
for it read ours. Label values are fixed words chosen by the code (never URLs, headers or
peer input), so nothing secret or unbounded reaches `/metrics`.
"""
from __future__ import annotations

from collections import defaultdict

from aiohttp import web


class Metrics:
    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def declare(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._values[name]
        series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(set(self._help) | set(self._values)):
            kind, text = self._help.get(name, ("untyped", ""))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(self._values.get(name, {}).items()):
                lab = ",".join(f'{k}="{v}"' for k, v in labels)
                text = str(int(value)) if float(value).is_integer() else repr(float(value))
                lines.append(f"{name}{{{lab}}} {text}" if lab else f"{name} {text}")
        return "\n".join(lines) + "\n"

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(text=self.render(), content_type="text/plain")
