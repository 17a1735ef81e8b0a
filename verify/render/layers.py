"""The layer records (verify/judge/layers.py) on a terminal: `explain --isolate`'s listing."""

from __future__ import annotations

from typing import Any

from verify.judge.layers import LIMIT, Isolation, outside_text


def render_isolation(result: Isolation, console: Any, limit: int = LIMIT) -> None:
    from rich.markup import escape

    named = result.named
    if not result.layers:  # nothing was re-run: no check to mark as passed
        console.print(f"[yellow]![/] isolated: no layer of {escape(result.candidate)} was re-run")
    elif not named:
        console.print(f"[bold green]✓[/] isolated: every one of {len(result.layers)} layers of "
                      f"{escape(result.candidate)} is within {result.factor:g}x its own float32 floor on "
                      f"{escape(result.reference)}'s inputs")
    else:
        console.print(f"[bold red]✗[/] isolated: {len(named)} of {len(result.layers)} layers differ on their own "
                      f"(each re-run on {escape(result.reference)}'s float64 inputs, judged on its own floor):")
        for layer in named[:limit]:
            fused = f" (computed with {', '.join(layer.fused_with)})" if layer.fused_with else ""
            channel = f", channel {layer.channel}" if layer.channel is not None else ""
            console.print(f"  • {escape(layer.module)}{escape(fused)}: {layer.ratio:.0f}x its own floor "
                          f"(max abs {layer.max_abs:.2e}{channel})")
        if len(named) > limit:
            console.print(f"  … and {len(named) - limit} more (see --json)")
    if result.unrunnable:
        shown = escape(", ".join(result.unrunnable[:limit]))
        console.print(f"[yellow]{len(result.unrunnable)} layers could not run on {escape(result.reference)}'s inputs "
                      f"(of another shape, or refused by their runtime): {shown}[/]")
    if result.skipped:
        names = list(dict.fromkeys(result.skipped))
        console.print(f"[yellow]{len(names)} layers were not re-run (their inputs do not map back to "
                      f"{escape(result.reference)}'s values, or their own ops are in no leaf module): "
                      f"{escape(', '.join(names[:limit]))}[/]")
    if result.outside:
        console.print(f"[yellow]{escape(outside_text(result).removeprefix('; '))}[/]")
    if result.note:
        console.print(f"[yellow]{escape(result.note)}[/]")
