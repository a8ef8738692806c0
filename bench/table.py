#!/usr/bin/env python3
"""bench/compare's table: medians, minima and ratios to boxrun, with the issue's targets.

Usage: table.py JSON_DIR RSS30_KB RSS300_KB RUNNING_KB CORES  (hyperfine exports in JSON_DIR)

A section is SECTION.json (one series) or SECTION.r1.json, SECTION.r2.json... (rounds of it).
The table pools every round's runs; each verdict is the median of the rounds' own ratios.
SECTION-apart.json, if any, adds rows timed in a series of their own (no verdict uses them).
"""

import datetime
import glob
import json
import os
import re
import statistics
import sys

SECTIONS = [
    ("start", "Warm start, `tiny true`", "≤ 1.0× ch-run, ≤ 1.25× floor"),
    ("cold-debian", "Cold pull + unpack, debian (2 layers)", "≤ 0.5× fastest peer"),
    ("cold-big", "Cold pull + unpack, big (3 layers)", "≤ 0.6× fastest peer, ≤ 1.2× machine limit"),
    ("warm-pull", "Warm pull (image cached)", "≤ 0.5× skopeo"),
    ("concurrent", "Cold starts, debian", "64 at once ≤ 1.3× one"),
    ("cpu", "CPU-bound job", "inside within bare's spread"),
]


def median_of(results, prefix):
    """The median of the first command named `prefix`..., or None if that peer was skipped."""
    return next((r["median"] for r in results if r["command"].startswith(prefix)), None)


def checks(key, results):
    """The issue's targets for one section: (what, measured ratio, limit); None where a peer is missing."""
    box = results[0]["median"]
    ratio = lambda other: None if other is None else box / other
    if key == "start":
        return [("boxrun / ch-run", ratio(median_of(results, "ch-run")), 1.0),
                ("boxrun / floor", ratio(median_of(results, "floor")), 1.25)]
    if key.startswith("cold-"):
        peers = [r["median"] for r in results[1:] if not r["command"].startswith("machine limit")]
        found = [("boxrun / fastest peer", ratio(min(peers)) if peers else None,
                  0.5 if key == "cold-debian" else 0.6)]
        if key == "cold-big":
            found.append(("boxrun / machine limit", ratio(median_of(results, "machine limit")), 1.2))
        return found
    if key == "warm-pull":
        return [("boxrun / skopeo", ratio(median_of(results, "skopeo")), 0.5)]
    if key == "concurrent":
        one, many = median_of(results, "boxrun: 1 "), median_of(results, "boxrun: 64 ")
        return [("64 at once / one", many / one if one and many else None, 1.3)]
    return []


def load(json_dir, key):
    """The rounds of a section (each a list of hyperfine results); [] if it did not run."""
    single = os.path.join(json_dir, key + ".json")
    if os.path.exists(single):
        paths = [single]
    else:
        number = lambda path: int(re.search(r"\.r(\d+)\.json$", path).group(1))
        paths = sorted(glob.glob(os.path.join(json_dir, key + ".r*.json")), key=number)
    return [json.load(open(path))["results"] for path in paths]


def pooled(rounds):
    """One result per command over every round's runs: their median, min and stddev."""
    out = []
    for i, first in enumerate(rounds[0]):
        times = [t for results in rounds for t in results[i]["times"]]
        stddev = statistics.stdev(times) if len(times) > 1 else 0
        out.append({"command": first["command"], "median": statistics.median(times), "min": min(times),
                    "stddev": stddev})
    return out


def of_rounds(values):
    """The median of the rounds' values, and the list of them when there are several."""
    shown = "" if len(values) == 1 else ", median of %d rounds: %s" % (
        len(values), " ".join("%.2f" % v for v in values))
    return statistics.median(values), shown


def verdict(key, rounds):
    per_round = [checks(key, results) for results in rounds]
    parts = []
    for i, (what, _, limit) in enumerate(per_round[0]):
        values = [found[i][1] for found in per_round]
        if None in values:
            parts.append("%s: not measured (peer skipped)" % what)
            continue
        value, shown = of_rounds(values)
        state = "met" if value <= limit else "**missed by %.0f%%**" % (100 * (value / limit - 1))
        parts.append("%s %.2f× (≤ %.2f×%s): %s" % (what, value, limit, shown, state))
    return "Target: " + "; ".join(parts) + "."


def cpu_verdict(rounds, results):
    """Inside vs bare: how much slower inside (the median of the rounds' differences), against
    bare's stddev over all its runs (`results`, pooled; faster is never a miss). The job's other
    rows (run another way, or by a peer) are reported beside it as references, judged by nothing."""
    parts = []
    for job in ("sha256sum", "python loop"):
        bare = [median_of(results, "bare: " + job) for results in rounds]
        inside = [median_of(results, "boxrun: " + job) for results in rounds]
        if None in bare or None in inside:
            continue
        spread = next(r["stddev"] for r in results if r["command"].startswith("bare: " + job))
        diff = statistics.median(i - b for i, b in zip(inside, bare))
        state = "met" if diff <= spread else "**missed by %s**" % fmt(diff - spread)
        references = ""
        for r in results:
            who, _, what = r["command"].partition(": ")
            if what.startswith(job) and who not in ("bare", "boxrun"):
                other = [median_of(results, r["command"]) for results in rounds]
                references += "; %s − bare %+.1f ms" % (
                    who, statistics.median(o - b for o, b in zip(other, bare)) * 1000)
        parts.append("%s inside − bare %+.1f ms (bare's stddev %s%s%s): %s" % (
            job, diff * 1000, fmt(spread), "" if len(rounds) == 1 else ", %d rounds" % len(rounds),
            references, state))
    return "Target: " + "; ".join(parts) + "."


def fmt(seconds):
    return "%.1f ms" % (seconds * 1000) if seconds < 1 else "%.2f s" % seconds


def main(json_dir, rss30, rss300, running, cores):
    out = ["# boxrun and its peers, side by side",
           "",
           "`bench/compare` on %s cores, %s. Medians (min) of all runs; ratio = median / boxrun's. "
           "Sections run in rounds judge by the median of the rounds' own ratios."
           % (cores, datetime.date.today().isoformat()), ""]
    for key, title, target in SECTIONS:
        rounds = load(json_dir, key)
        if not rounds:
            continue
        results = pooled(rounds)
        apart = load(json_dir, key + "-apart")  # a series of its own (podman's warm start)
        if apart:
            results += pooled(apart)
        base = results[0]["median"]
        out += ["## %s (target: %s)" % (title, target), "",
                "| command | median | min | stddev | ratio |", "|---|---:|---:|---:|---:|"]
        for r in results:
            out.append("| %s | %s | %s | %s | %.2f× |" % (r["command"], fmt(r["median"]), fmt(r["min"]),
                                                      fmt(r["stddev"] or 0), r["median"] / base))
        out += ["", cpu_verdict(rounds, results) if key == "cpu" else verdict(key, rounds), ""]
    rss30, rss300, running = int(rss30), int(rss300), int(running)
    out += ["## Memory (targets: pull flat in the layer size and < 64 MB; outer + init < 4 MB)", "",
            "| what | RSS |", "|---|---:|",
            "| peak RSS of `boxrun pull`, one 30 MB layer (median of 3) | %.1f MB |" % (rss30 / 1024),
            "| peak RSS of `boxrun pull`, one 300 MB layer (median of 3) | %.1f MB (%.2f× the 30 MB pull) |"
            % (rss300 / 1024, rss300 / max(rss30, 1)),
            "| boxrun's own processes (outer + init) while a job runs | %.1f MB |" % (running / 1024), "",
            "Target: " + "; ".join([
                "pull %.2f× from 30 to 300 MB (≤ 1.10×): %s" % (rss300 / max(rss30, 1),
                                                             "met" if rss300 <= 1.1 * rss30 else "**missed**"),
                "pull %.1f MB (< 64 MB): %s" % (rss300 / 1024, "met" if rss300 < 64 * 1024 else "**missed**"),
                "outer + init %.1f MB (< 4 MB): %s" % (running / 1024, "met" if running < 4096 else "**missed**"),
            ]) + ".", ""]
    sharing = os.path.join(json_dir, "sharing.json")
    if os.path.exists(sharing):
        s = {k: v / 1e6 for k, v in json.load(open(sharing)).items()}
        out += ["## Image sharing: debian, then big (their base layer is the same blob)", "",
                "| what | disk |", "|---|---:|",
                "| blobs of both (the shared layer stored once) | %.0f MB |" % s["blobs"],
                "| rootfs of debian; of big | %.0f MB; %.0f MB |" % (s["a"], s["b"]),
                "| both rootfs trees (hard links counted once) | %.0f MB |" % s["both"],
                "| saved by big's files hard-linked to debian's | %.0f MB |" % (s["a"] + s["b"] - s["both"]),
                "| files of big identical to debian's, still not shared | %.0f MB (%.0f%% of both trees) |"
                % (s["identical"], 100 * s["identical"] / s["both"]), ""]
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
