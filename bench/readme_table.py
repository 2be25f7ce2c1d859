"""Write the README's speed table from benchmark records, never by hand.

    python bench/interpolation.py --workload mlp --gauss --json bench/results/mlp.json
    python bench/readme_table.py bench/results/*.json     # rewrites README.md in place
    python bench/readme_table.py --check bench/results/*.json   # exit 1 if README differs

Each record (``bench/interpolation.py --json``) is one row; every cell is the ratio of the
two methods' fastest rounds, then min/median/max over the record's rounds of the ratio
measured within a round (a ``--quick`` record has no paper-style loop: shown as –). The table lies between the
``<!-- speed-table -->`` and ``<!-- /speed-table -->`` markers of README.md; nothing else is
touched. ``make speed-table`` runs the benchmark suite and this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- speed-table -->", "<!-- /speed-table -->"
HEADER = (
    "| workload | floor | paper-style loop | mliscan | mliscan + Gauss "
    "(× the loss-only scan) |\n| --- | --- | --- | --- | --- |"
)
COLUMNS = 5
# What each workload is (the benchmark's own description of its model and data).
WORKLOADS = {
    "mlp": "mlp 64-128-128-10, digits",
    "mlp-bn": "mlp-bn (the same with BN)",
    "resnet20": "resnet20, CIFAR-shaped images, BN",
    "lstm-lm": "lstm-lm (2×128, tinytext: sequences of 35 tokens)",
    "transformer-lm": "transformer-lm (2 blocks, 128 wide), tinytext",
    "gpt2-tiny": "gpt2-tiny (the tests' Hub GPT-2: 2 layers, 32 wide; 64-token sequences)",
    "pythia-shaped": "pythia-shaped (GPT-NeoX, Pythia-14m's shape: 6 layers, 128 wide)",
    "llama-tiny": "llama-tiny (2 layers, 32 wide, grouped-query attention)",
    "bert-tiny": "bert-tiny (BERT masked LM, 2 layers, 32 wide)",
    "bert-cls-tiny": "bert-cls-tiny (BERT sequence classifier, padding masks)",
}
ORDER = list(WORKLOADS)


def span(values: list[float], suffix: str = "×") -> str:
    """min/median/max of ratios (one value: itself)."""
    lo, med, hi = min(values), statistics.median(values), max(values)
    if f"{lo:.2f}" == f"{hi:.2f}":
        return f"{med:.2f}{suffix}"
    return f"{lo:.2f}/{med:.2f}/{hi:.2f}{suffix}"


def fastest(seconds: list[float], base: list[float]) -> float:
    """The ratio of the fastest rounds: other work on the machine only ever adds time, so a
    method's fastest round is its least disturbed one."""
    return min(seconds) / min(base)


def cell(seconds: list[float], base: list[float], ratios: list[float]) -> str:
    """The fastest rounds' ratio, then min/median/max of the ratio within a round."""
    return f"{fastest(seconds, base):.2f}× ({span(ratios, '')})"


def row(record: dict) -> str:
    methods = record["methods"]
    name = record["workload"]
    what = WORKLOADS.get(name, name)
    size = f"{record['examples']} examples"
    detail = [size, f"{record['alphas']} α", f"{record['repeats']} rounds"]
    if record.get("bn_text", "no BN") not in ("no BN", "BN statistics of the whole data"):
        detail.insert(1, record["bn_text"])
    cells = [f"{what}, {', '.join(detail)}", "1.00"]
    floor = methods["(a) floor"]["seconds"]
    paper = methods.get("(b) paper-style loop")
    cells.append("–" if paper is None else cell(paper["seconds"], floor, paper["x_floor"]))
    scan = methods["(c) mliscan"]
    fast, rounds = cell(scan["seconds"], floor, scan["x_floor"]).split(" ", 1)
    cells.append(f"**{fast}** {rounds}")
    gauss = ""
    if "gauss_cost" in record:
        d = methods["(d) mliscan + Gauss"]["seconds"]
        gauss = f"**{fastest(d, scan['seconds']):.2f}×** ({span(record['gauss_cost'], '')}"
        for label, key in (
            ("nested jvp", "(d') mliscan + Gauss by nested jvp"),
            ("double backward", "(b') paper-style + Gauss (double backward)"),
        ):
            if key in methods:  # the same rounds' loss-only scan
                other = methods[key]["seconds"]
                ratios = [a / b for a, b in zip(other, scan["seconds"], strict=True)]
                gauss += f"; {label}: {cell(other, scan['seconds'], ratios)}"
        gauss += ")"
    cells.append(gauss)
    return "| " + " | ".join(cells) + " |"


def table(records: list[dict]) -> str:
    def key(r: dict) -> tuple[int, str, int]:
        name = r["workload"]
        return (ORDER.index(name) if name in ORDER else len(ORDER), name, r["alphas"])

    records = sorted(records, key=key)
    machines = sorted(
        {
            f"{r.get('machine', 'a machine')}, {r['device']}, {r['threads']} thread(s), "
            f"torch {r['torch']}"
            for r in records
        }
    )
    lines = [
        f"Ratios from `bench/interpolation.py` ({'; '.join(machines)}). Each cell: the ratio "
        "of the two methods' fastest rounds (in bold for mliscan; other work on a machine only "
        "ever adds time), then in brackets min/median/max over the rounds of the ratio measured "
        "within one round of interleaved methods.",
        "",
        HEADER,
        *(row(r) for r in records),
    ]
    return "\n".join(lines)


def replace(text: str, new_table: str) -> str:
    """``text`` with the part between the markers replaced by ``new_table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} section")
    return text[: start + len(BEGIN)] + "\n" + new_table + "\n" + text[end:]


def current(text: str) -> str:
    """The table now between the markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} section")
    return text[start + len(BEGIN) : end].strip("\n")


def parse(section: str) -> list[list[str]]:
    """The rows of the markdown table in a section (header and separator excluded)."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    if len(rows) < 2 or rows[0] + "\n" + rows[1] != HEADER:
        raise ValueError("the speed table's header is not the generated one")
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in rows[2:]]
    for c in cells:
        if len(c) != COLUMNS:
            raise ValueError(f"a row of {len(c)} cells, not {COLUMNS}: {c}")
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="bench/interpolation.py --json files")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if it differs")
    args = p.parse_args(argv)
    records = [json.loads(path.read_text()) for path in args.records]
    text = args.readme.read_text()
    new = replace(text, table(records))
    if args.check:
        if new != text:
            print(
                f"{args.readme}: the speed table is not the one these records give", file=sys.stderr
            )
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"wrote the speed table of {len(records)} records into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
