#!/usr/bin/env python3
"""Instructions per symbol from a QEMU `-d in_asm,exec,nochain` trace, in the
window between the first and last execution of code in [lo, hi) (a guest's
image), with each symbol's calls per execution of the guest's hottest block.

Usage: tbprof.py TRACE LO_HEX HI_HEX ELF... (docs/benchmarks.md)."""
import sys, re, bisect, subprocess, collections
trace, lo, hi = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16)
elfs = sys.argv[4:]
syms = []
for e in elfs:
    out = subprocess.run(["nm", "-n", "-C", "--defined-only", e], capture_output=True, text=True).stdout
    for l in out.splitlines():
        p = l.split(" ", 2)
        if len(p) == 3 and p[1] in "tTwW":
            syms.append((int(p[0], 16), p[2][:90]))
syms.sort()
addrs = [a for a, _ in syms]
def sym(pc):
    if lo <= pc < hi: return "GUEST"
    i = bisect.bisect_right(addrs, pc) - 1
    return syms[i][1] if i >= 0 else "?"
ninsn = {}
execs = []  # list of pcs in order would be huge; count per pc with window handling
# pass 1: collect per-pc instruction counts and the window bounds (line numbers)
cur = None; n = 0; first = last = None; lineno = 0
tr = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
with open(trace, errors="replace") as f:
    for line in f:
        lineno += 1
        if line.startswith("IN:"):
            cur = None; n = 0; continue
        if line.startswith("0x") and ":" in line[:20]:
            pc = int(line.split(":")[0], 16)
            if cur is None: cur = pc
            n += 1; continue
        if line.startswith("Trace"):
            if cur is not None:
                ninsn[cur] = n; cur = None
            m = tr.match(line)
            if m:
                pc = int(m.group(1), 16)
                if lo <= pc < hi:
                    if first is None: first = lineno
                    last = lineno
print("window lines", first, last, file=sys.stderr)
# pass 2: count in window
per = collections.Counter(); tb_exec = collections.Counter()
cur = None; n = 0; lineno = 0
ninsn2 = {}
with open(trace, errors="replace") as f:
    for line in f:
        lineno += 1
        if lineno > last: break
        if line.startswith("IN:"):
            cur = None; n = 0; continue
        if line.startswith("0x") and ":" in line[:20]:
            pc = int(line.split(":")[0], 16)
            if cur is None: cur = pc
            n += 1; continue
        if line.startswith("Trace"):
            if cur is not None:
                ninsn2[cur] = n; cur = None
            if lineno < first: continue
            m = tr.match(line)
            if m:
                pc = int(m.group(1), 16)
                tb_exec[pc] += 1
for pc, c in tb_exec.items():
    per[sym(pc)] += c * ninsn2.get(pc, ninsn.get(pc, 1))
total = sum(per.values())
print(f"total {total}")
outs = [c for pc, c in tb_exec.items() if lo <= pc < hi]
print("guest TB execs max", max(outs) if outs else 0)
calls = collections.Counter()
starts = {a: n for a, n in syms}
for pc, c in tb_exec.items():
    if pc in starts: calls[starts[pc]] += c
for s, c in per.most_common(70):
    print(f"{c:>12} {c/max(outs):8.1f} {calls.get(s,0)/max(outs):6.2f}x {s}")
