"""The "figures against the peers" table from benchmarks/results: speed beside quality, per machine.

    python benchmarks/peer_table.py                      # the newest run of this machine's CPU
    python benchmarks/peer_table.py --cpu Xeon           # of another machine (a substring of its CPU name)
    python benchmarks/peer_table.py --all                # one table per machine in the results
    python benchmarks/peer_table.py --write README.md --write docs/BENCHMARKS.md   # replace the marked tables

Reads the newest ``*_cpu_bench_*.json`` and ``*_quality_bench_*.json`` of the
machine in benchmarks/results (newest = latest ``date``, then ``recorded``,
then file name), in either form found there: the JSON that cpu_bench.py /
quality_bench.py print (``runtimes`` / ``variants``) or the transcribed files
with ``rows``. Each runtime of the speed run gets the quality figures of the
same variant (top-1 agreement and mean KL against the float32 model on the
shipped text sample); a ``+eagle`` variant those of its base variant, as
greedy EAGLE is meant to give the base's tokens. A figure that the quality run
lacks is printed as "not measured", never borrowed from another variant.

``--write FILE`` replaces the text between ``<!-- peer-table:start -->`` and
``<!-- peer-table:end -->`` in FILE (README.md: this machine's table;
docs/BENCHMARKS.md: with --all, every machine's). Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
START, END = "<!-- peer-table:start -->", "<!-- peer-table:end -->"
#: cpu_bench peer name -> quality_bench peer key, and the README's wording.
PEERS = {"llama.cpp": ("llama.cpp", "llama.cpp (llama-cpp-python {llama}), the Q4_1 GGUF"),
         "llama.cpp-flash-attn": ("llama.cpp", "llama.cpp (llama-cpp-python {llama}) with flash attention, Q4_1"),
         "ort-genai-int4": ("ort-genai-int4", "onnxruntime-genai {genai}, int4 (its builder's re-quantization)"),
         "ort-genai-fp32": ("ort-genai-fp32", "onnxruntime-genai {genai}, fp32")}
#: transcribed quality rows: variant text -> quality key
TRANSCRIBED_QUALITY = {"int4, fused, int8 compute (default)": "int4/fused/int8",
                       "int4-sym, fused, int8 compute": "int4-sym/fused/int8",
                       "int8, fused, int8 compute": "int8/fused/int8", "none, fused": "none/fused",
                       "Q4_1 GGUF (Q8 activations)": "peer:llama.cpp",
                       "int4 (builder's symmetric re-quantization, block 32)": "peer:ort-genai-int4",
                       "fp32": "peer:ort-genai-fp32"}


def this_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""


def cpu_of(data: Dict[str, Any]) -> str:
    return str(data.get("machine", {}).get("cpu") or data.get("cpu") or "unknown CPU")


def machine_key(cpu: str) -> str:
    """A machine's name for grouping: the CPU model up to the first comma."""
    return cpu.split(",")[0].strip()


def runs(kind: str, results: str = RESULTS) -> List[Tuple[str, Dict[str, Any]]]:
    """(path, data) of every result file of one benchmark, oldest first."""
    out = []
    for path in glob.glob(os.path.join(results, f"*_{kind}_*.json")):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data.setdefault("date", os.path.basename(path)[:10])
        out.append((path, data))
    return sorted(out, key=lambda p: (p[1]["date"], str(p[1].get("recorded", "")), os.path.basename(p[0])))


def newest(kind: str, cpu: str, results: str = RESULTS) -> Optional[Tuple[str, Dict[str, Any]]]:
    matching = [r for r in runs(kind, results) if cpu.lower() in cpu_of(r[1]).lower()]
    return matching[-1] if matching else None


def quality_table(data: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """quality key ("int4/fused/int8", "peer:llama.cpp", ...) -> {top1, kl}."""
    out: Dict[str, Dict[str, float]] = {}
    for key, v in data.get("variants", {}).items():             # quality_bench.py's own JSON
        out[key] = {"top1": v["top1_agreement"], "kl": v["mean_kl"]}
    for row in data.get("rows", []):                              # transcribed
        key = TRANSCRIBED_QUALITY.get(row["variant"])
        if key and (key.startswith("peer:") or row["runtime"] == "edgellm_ros"):
            out[key] = {"top1": row["top1_agreement"], "kl": row["mean_kl_nats"]}
    return out


def speed_rows(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per runtime: name, kind (ours/peer), quality key, decode median, ratios."""
    rows = []
    if "runtimes" in data:                                        # cpu_bench.py's own JSON
        ratios = data.get("ratios", {})
        best = ratios.get("best_peer", {}).get("decode_tok_s", {}).get("runtime")
        for name, r in data["runtimes"].items():
            row: Dict[str, Any] = {"name": name, "decode": r["metrics"]["decode_tok_s"]["median"]}
            if name.startswith("ours["):
                variant = name[5:-1]
                cfg = r.get("engine_config", {})
                quant = cfg.get("quantization", variant.split("+")[0].split("/")[0])
                key = f"{quant}/{'fused' if cfg.get('fused_ops', True) else 'plain'}" + (
                    f"/{cfg.get('int4_compute', 'int8')}" if quant != "none" else "") + (
                    # a reduced LM head is another variant: never the whole head's quality
                    f"/vocab={cfg['vocab_reduction']}" if cfg.get("vocab_reduction") else "")
                rt = ratios.get(name, {})
                metrics = ("decode_tok_s", "prefill_tok_s", "ttft_s")
                row.update(kind="ours", variant=variant, quality=key, engine_config=cfg,
                           ratios=[rt.get(m, {}).get("ours_over_best") for m in metrics],
                           eagle=variant.split("/")[0].endswith("+eagle"),
                           agreement=r.get("agreement", {}))
            else:
                row.update(kind="peer", quality="peer:" + PEERS.get(name, (name, ""))[0], best=name == best,
                           versions=r.get("versions", {}), version=r.get("version"))
            rows.append(row)
        return rows
    best_decode = max((r["decode_tok_s"] for r in data.get("rows", []) if r["runtime"] != "edgellm_ros"),
                      default=None)
    ratio = data.get("ratios_to_best_peer", {})
    for r in data.get("rows", []):                                # transcribed
        if r["runtime"] == "edgellm_ros":
            v = r["variant"]
            rows.append({"name": f"ours[{v}]", "kind": "ours", "variant": v, "decode": r["decode_tok_s"],
                         "quality": f"{v}/fused/int8" if v != "none" else "none/fused", "eagle": False,
                         "ratios": [ratio.get(m, {}).get(v) for m in ("decode", "prefill", "ttft")]})
        else:
            peer = "llama.cpp" if r["runtime"] == "llama.cpp" else f"ort-genai-{r['variant']}"
            rows.append({"name": peer, "kind": "peer", "decode": r["decode_tok_s"], "quality": "peer:" + peer,
                         "best": r["decode_tok_s"] == best_decode})
    return rows


def fmt(x: Any, digits: int) -> str:
    if x is None:
        return "not measured"
    return f"{x:.{digits}f}" if digits else str(x)


def label(row: Dict[str, Any], data: Dict[str, Any]) -> str:
    if row["kind"] == "ours":
        cfg = row.get("engine_config", {})
        default = row["variant"] == "int4" and not cfg.get("eagle_draft")
        text = f"ours, `{row['variant']}`" + (" (default; the GGUF's own Q4_1 blocks)" if default else "")
        if "eagle_draft" in cfg and not row.get("eagle"):   # runs that recorded their config
            text += " (EAGLE draft loaded, EAGLE off: two-row steps)" \
                if cfg["eagle_draft"] else " (no EAGLE draft loaded: one-row steps)"
        if cfg.get("vocab_reduction"):
            text += f" (LM head reduced to the `{cfg['vocab_reduction']}` set: its quality against " \
                    "the whole head in docs/VOCAB_REDUCTION.md)"
        agreement = row.get("agreement", {})
        if row.get("eagle") and "leading_identical_vs_base" in agreement:
            text += f" (greedy ids equal to the base's for {agreement['leading_identical_vs_base']} of " \
                    f"{len(agreement.get('ids', '').split()) or '?'} tokens)"
        return text
    peers = data.get("peers", {})
    llama = row.get("version") or re.sub(r"\D*([\d.]+).*", r"\1", str(peers.get("llama.cpp", "?")))
    genai = row.get("versions", {}).get("onnxruntime-genai") or \
        re.sub(r"\D*([\d.]+).*", r"\1", str(peers.get("onnxruntime-genai", "?")))
    text = PEERS.get(row["name"], ("", row["name"]))[1].format(llama=llama, genai=genai)
    return text + (" (the best peer)" if row.get("best") else "")


def load(data: Dict[str, Any]) -> str:
    """", load average X before / Y after" where the run recorded it (a shared machine's other work)."""
    m = data.get("machine", {})
    if "load_average_1m_before" not in m:
        return ""
    return f", load average {m['load_average_1m_before']} before / {m.get('load_average_1m_after', '?')} after"


def table(cpu: str, results: str = RESULTS) -> str:
    """Markdown: the run's line, then one row per runtime with quality beside speed."""
    speed = newest("cpu_bench", cpu, results)
    if speed is None:
        raise SystemExit(f"no cpu_bench result for a CPU matching {cpu!r} in {results}")
    path, data = speed
    quality = newest("quality_bench", machine_key(cpu_of(data)), results)
    q = quality_table(quality[1]) if quality else {}
    settings = data.get("settings", {})
    head = (f"`{data.get('command', 'python benchmarks/cpu_bench.py')}` ({data['date']}, commit "
            f"{data.get('commit') or 'not recorded'}): **{cpu_of(data)}**, "
            f"{settings.get('threads', data.get('threads', 2))} threads each, medians of "
            f"{settings.get('rounds', data.get('rounds', '?'))} alternating rounds{load(data)} "
            f"(`benchmarks/results/{os.path.basename(path)}`). Quality: "
            + (f"`benchmarks/results/{os.path.basename(quality[0])}` ({quality[1]['date']}), top-1 agreement and "
               "mean KL against the float32 model on the shipped text sample."
               if quality else "no quality_bench run of this machine: not measured."))
    lines = [head, "", "| runtime | decode tokens/s | ratio to the best peer: decode; 512-token prefill; "
             "time to first token | top-1 agreement | mean KL (nats) |", "| --- | --- | --- | --- | --- |"]
    for row in speed_rows(data):
        qual = q.get(row["quality"], {})
        ratios = "; ".join(fmt(r, 2) for r in row.get("ratios", [])) if row["kind"] == "ours" else ""
        lines.append(f"| {label(row, data)} | {fmt(row['decode'], 1)} | {ratios} | "
                     f"{fmt(qual.get('top1'), 3)} | {fmt(qual.get('kl'), 4)} |")
    return "\n".join(lines)


def machines(results: str = RESULTS) -> List[str]:
    """Each machine with a cpu_bench run, by the CPU name of its newest run."""
    seen: Dict[str, str] = {}
    for _, data in runs("cpu_bench", results):
        seen[machine_key(cpu_of(data))] = machine_key(cpu_of(data))
    return sorted(seen)


def replace_marked(path: str, text: str) -> None:
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if START not in doc or END not in doc:
        raise SystemExit(f"{path}: no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", default="", help="a substring of the machine's CPU name (default: this machine's)")
    ap.add_argument("--all", action="store_true", help="one table per machine found in the results")
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--write", action="append", default=[], help="replace the marked table in this file")
    a = ap.parse_args()
    cpus = machines(a.results) if a.all else [a.cpu or machine_key(this_cpu())]
    text = "\n\n".join(table(c, a.results) for c in cpus)
    for path in a.write:
        replace_marked(path, text)
        print(f"[peer_table] {path}: table replaced", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
