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
TRACE = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")

def executions(path):
    """(line number, block start, its instruction count) for each executed
    translation block, the count from the block's latest translation."""
    ninsn = {}; cur = None; n = 0
    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("IN:"):
                cur = None; n = 0
            elif line.startswith("0x") and ":" in line[:20]:
                if cur is None: cur = int(line.split(":")[0], 16)
                n += 1
            elif line.startswith("Trace"):
                if cur is not None:
                    ninsn[cur] = n; cur = None
                m = TRACE.match(line)
                if m:
                    pc = int(m.group(1), 16)
                    yield lineno, pc, ninsn.get(pc, 1)

# Pass 1: the window, from the guest's first block executed to its last.
first = last = None
for lineno, pc, _ in executions(trace):
    if lo <= pc < hi:
        first = first or lineno
        last = lineno
print("window lines", first, last, file=sys.stderr)
# Pass 2: instructions and executions per block inside it.
per = collections.Counter(); tb_exec = collections.Counter()
for lineno, pc, n in executions(trace):
    if lineno > last: break
    if lineno < first: continue
    tb_exec[pc] += 1
    per[sym(pc)] += n
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
