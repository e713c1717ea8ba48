"""Gives an older revision's benches/rdma.rs the callgrind pacing of the current anyrdma-perf.

scripts/bench --baseline REV measures REV's library with REV's benchmark program; before anyrdma-perf
(perf/) that was the bench target benches/rdma.rs. Instruction counts are comparable only when both
programs pace their ping-pong the same way (ANYRDMA_BENCH_PACE, see `Pacing` in perf/src/pacing.rs),
so this inserts the same hooks into a bench that predates them: the `Pacing` type (copied from the
current file), and its calls at the same places of the anyrdma and raw verbs write-with-immediate
loops. A file that has them already is left as it is.

    python3 benches/pacing_patch.py perf/src/pacing.rs OLD_RDMA_RS
"""

import re
import sys

current, old = sys.argv[1], sys.argv[2]
text = open(old).read()
if "ANYRDMA_BENCH_PACE" in text:
    sys.exit(0)
source = open(current).read()
start = source.index("/// Fixed pauses that make the instruction count")
end = source.index("\n}\n", source.index("impl Pacing {")) + 3
pacing_type = source[start:end]

# (pattern, replacement): each must match exactly once.
edits = [
    # anyrdma: lat_msg
    (r"(\n(\s*)barrier\(ctl\)\?;\n\s*for i in 0\.\.spec\.iters \{\n\s*if client \{\n\s*stamps\.push\(Instant::now\(\)\);\n(\s*)pending = Some\(post\(sbuf\.take\(\)\.expect\(\"buffer back\"\), i\)\);\n)",
     lambda m: "\n" + m.group(2) + "let pacing = Pacing::from_env();" + m.group(1) + m.group(3) + "pacing.after_client_post();\n"),
    (r"(\n(\s*)if !client \{\n)(\s*)(pending = Some\(post\(sbuf\.take\(\)\.expect\(\"buffer back\"\), i\)\);)",
     lambda m: m.group(1) + m.group(3) + "pacing.before_server_reply();\n" + m.group(3) + m.group(4)),
    # raw verbs loop
    (r"(\n(\s*)let mut stamps = Vec::with_capacity\(spec\.iters \+ 1\);\n)(\s*barrier\(&mut ctl\)\?;\n\s*for i in 0\.\.spec\.iters \{\n\s*match spec\.test \{)",
     lambda m: m.group(1) + m.group(2) + "let pacing = Pacing::from_env();\n" + m.group(3)),
    (r"(\n(\s*)r\.post_send\(opcode, sbuf, smr, size, remote, i as u32, inline\)\?;\n)(\s*\}\n\s*// Client: the reply)",
     lambda m: m.group(1) + m.group(2) + "pacing.after_client_post();\n" + m.group(3)),
    (r"(\n\s*if !client \{\n)(\s*)(r\.post_send\(opcode, sbuf, smr, size, remote, i as u32, inline\)\?;\n\s*\})",
     lambda m: m.group(1) + m.group(2) + "pacing.before_server_reply();\n" + m.group(2) + m.group(3)),
]
for pattern, replace in edits:
    text, count = re.subn(pattern, replace, text, count=1)
    if count != 1:
        sys.exit(f"pacing_patch: no place for the pacing hooks in {old} ({pattern[:60]}...)")
text += "\n" + pacing_type
open(old, "w").write(text)
