"""bench/results/throughput.png: TCP goodput per setup and suite, and packets/s per gateway core."""

from __future__ import annotations

from pathlib import Path

from bench.targets import per_core_flood


def draw(rows: list[dict], path: Path, title: str) -> Path | None:
    """Draw the chart; returns None (and draws nothing) if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if "error" not in r]
    setups = [s for s in dict.fromkeys(r["setup"] for r in ok if r["setup"] != "plain")]
    suites = sorted({r["esp"] for r in ok if r.get("esp")})
    plain = next((r for r in ok if r["setup"] == "plain"), None)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8.5))
    width = 0.8 / max(len(suites), 1)
    for i, esp in enumerate(suites):
        values = [next((r["tcp"]["median_mbit_s"] for r in ok if r["setup"] == s and r.get("esp") == esp), 0)
                  for s in setups]
        bars = top.bar([x + i * width for x in range(len(setups))], values, width, label=esp)
        top.bar_label(bars, fmt="%.0f", fontsize=7)
    top.set_xticks([x + width * (len(suites) - 1) / 2 for x in range(len(setups))], setups, fontsize=8)
    top.set_ylabel("TCP goodput, Mbit/s (median)")
    note = f" (plain forwarding: {plain['tcp']['median_mbit_s']:.0f} Mbit/s)" if plain else ""
    top.set_title(f"hostA -> hostB through the tunnel{note}", fontsize=10)
    top.legend(fontsize=8)

    roles = ("gwA", "gwB")
    for i, role in enumerate(roles):
        values = []
        for s in setups:
            row = next((r for r in ok if r["setup"] == s and r.get("esp") == "aes256gcm16"), None)
            flood = per_core_flood(row) or {}
            values.append(flood.get("per_core_pps", {}).get(role, 0) / 1000)
        label = f"{role} ({'encrypt' if role == 'gwA' else 'decrypt'})"
        bars = bottom.bar([x + i * 0.4 for x in range(len(setups))], values, 0.4, label=label)
        bottom.bar_label(bars, fmt="%.0f", fontsize=7)
    bottom.axhline(250, color="red", linestyle="--", linewidth=1, label="target 250k")
    bottom.set_xticks([x + 0.2 for x in range(len(setups))], setups, fontsize=8)
    bottom.set_ylabel("1400-byte packets per CPU second (k)")
    bottom.set_title("packets carried per second of gateway CPU, aes256gcm16, saturating UDP flood", fontsize=10)
    bottom.legend(fontsize=8)

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
