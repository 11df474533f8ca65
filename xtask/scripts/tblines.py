#!/usr/bin/env python3
"""Instructions per source line (with its inlining chain) for the code of the
symbols whose names contain one of FILTERs, from a QEMU
`-d in_asm,exec,nochain` trace, from the first execution of code in
[lo, hi) (a guest's image) on, per execution of the guest's hottest block.
The finer view after `tbprof.py` names the functions (docs/benchmarks.md).

Usage: tblines.py TRACE LO_HEX HI_HEX ELF FILTER..."""
import sys, re, bisect, subprocess, collections
trace, lo, hi, elf = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16), sys.argv[4]
filters = sys.argv[5:]
syms = []
out = subprocess.run(["nm", "-n", "-C", "--defined-only", elf], capture_output=True, text=True).stdout
for l in out.splitlines():
    p = l.split(" ", 2)
    if len(p) == 3 and p[1] in "tTwW":
        syms.append((int(p[0], 16), p[2]))
syms.sort()
addrs = [a for a, _ in syms]
def sym(pc):
    i = bisect.bisect_right(addrs, pc) - 1
    return syms[i][1] if i >= 0 else "?"
TRACE = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
# Each translated block's instruction addresses; executions counted per
# instruction once the guest has run.
blocks = {}; cur = None; ins = []
count = collections.Counter(); guest_execs = collections.Counter()
started = False
with open(trace, errors="replace") as f:
    for line in f:
        if line.startswith("IN:"):
            cur = None; ins = []
        elif line.startswith("0x") and ":" in line[:20]:
            a = int(line.split(":")[0], 16)
            if cur is None: cur = a
            ins.append(a)
        elif line.startswith("Trace"):
            if cur is not None:
                blocks[cur] = ins; cur = None
            m = TRACE.match(line)
            if not m: continue
            pc = int(m.group(1), 16)
            if lo <= pc < hi:
                started = True
                guest_execs[pc] += 1
            if started:
                for a in blocks.get(pc, [pc]):
                    count[a] += 1
per = max(guest_execs.values()) if guest_execs else 1
sel = {a: c for a, c in count.items() if any(fl in sym(a) for fl in filters)}
res = subprocess.run(["addr2line", "-a", "-i", "-f", "-C", "-e", elf] + [hex(a) for a in sorted(sel)],
                     capture_output=True, text=True).stdout.split("\n")
chains = {}; at = None; chain = []
for l in res:
    if l.startswith("0x"):
        if at is not None: chains[at] = chain
        at = int(l, 16); chain = []
    elif l:
        chain.append(l)
if at is not None: chains[at] = chain
agg = collections.Counter()
for a, c in sel.items():
    ch = chains.get(a, [])
    where = " <- ".join(ch[i + 1].split("/")[-1] + "(" + ch[i][:30] + ")" for i in range(0, min(len(ch), 6), 2))
    agg[(sym(a)[:40], where)] += c
print(f"per execution of the guest's hottest block ({per} executions)")
for (s, w), c in agg.most_common(120):
    print(f"{c / per:8.1f} {s:40} {w}")
