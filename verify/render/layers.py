"""The layer records (verify/judge/layers.py) on a terminal: `explain --isolate`'s listing."""

from __future__ import annotations

from typing import Any

from verify.judge.layers import LIMIT, Isolation, outside_text


def render_isolation(result: Isolation, console: Any, limit: int = LIMIT) -> None:
    """One line each, never wrapped (a CI log's line stays greppable), user-controlled names as `markup`."""
    from verify.render.console import print_line
    from verify.render.text import markup

    named = result.named
    if not result.layers:  # nothing was re-run: no check to mark as passed
        print_line(console, f"[yellow]![/] isolated: no layer of {markup(result.candidate)} was re-run")
    elif not named:
        print_line(console, f"[bold green]✓[/] isolated: every one of {len(result.layers)} layers of "
                            f"{markup(result.candidate)} is within {result.factor:g}x its own float32 floor on "
                            f"{markup(result.reference)}'s inputs")
    else:
        print_line(console, f"[bold red]✗[/] isolated: {len(named)} of {len(result.layers)} layers differ on their "
                            f"own (each re-run on {markup(result.reference)}'s float64 inputs, judged on its own "
                            "floor):")
        for layer in named[:limit]:
            fused = f" (computed with {markup(', '.join(layer.fused_with))})" if layer.fused_with else ""
            channel = f", channel {layer.channel}" if layer.channel is not None else ""
            call = f" (call {layer.call + 1})" if layer.call else ""  # a module called twice: which call (hunt 31)
            print_line(console, f"  • {markup(layer.module)}{call}{fused}: {layer.ratio:.0f}x its own floor "
                                f"(max abs {layer.max_abs:.2e}{channel})")
        if len(named) > limit:
            print_line(console, f"  … and {len(named) - limit} more (see --json)")
    if result.unrunnable:
        shown = markup(", ".join(result.unrunnable[:limit]))
        print_line(console, f"[yellow]{len(result.unrunnable)} layers could not run on {markup(result.reference)}'s "
                            f"inputs (of another shape, or refused by their runtime): {shown}[/]")
    if result.skipped:
        names = list(dict.fromkeys(result.skipped))
        print_line(console, f"[yellow]{len(names)} layers were not re-run (their inputs do not map back to "
                            f"{markup(result.reference)}'s values, or their own ops are in no leaf module): "
                            f"{markup(', '.join(names[:limit]))}[/]")
    if result.outside:
        print_line(console, f"[yellow]{markup(outside_text(result).removeprefix('; '))}[/]")
    if result.note:
        print_line(console, f"[yellow]{markup(result.note)}[/]")
