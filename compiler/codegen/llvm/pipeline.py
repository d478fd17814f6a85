"""The native backend's pipeline: the target-independent rewrites (passes/pipeline.py) with
the native code's own choices: weights folded into constants made once (a BatchNorm into its
convolution, a weight.T), weights stored in the GEMM's panel layout, fusion into kernels under
the native rules, and the memory plan of the workspace arena."""

from __future__ import annotations

from ...passes.batch_norm import fold_batch_norm
from ...passes.fold import fold_weight_layout
from ...passes.manager import Pass
from ...passes.memory import plan_memory
from ...passes.pipeline import CLEANUP, REWRITES
from ...passes.transposed import transposed_operands
from ...passes.views import strided_products
from .fuse import fuse
from .layout import conv_layout

# The order matters (and passes/pipeline.py's order of REWRITES and CLEANUP):
# 1. fold_batch_norm after simplify: dropping an inference dropout, a no-op cast or reshape
#    between a conv and its batch_norm exposes the conv -> batch_norm pattern.
# 2. fold_weight_layout after hoist_scan_invariants: a scan body's `transpose(W)` of a
#    captured weight moves out of the loop, where it is `transpose(param)`, which
#    fold_weight_layout makes once; and after fold_batch_norm (which reads the conv/linear
#    weights as params): weight.T and other moves of a parameter become constants, made once
#    instead of per call.
# 3. both before CLEANUP: folded constants with equal values merge (cse), and dce removes
#    what is left unused.
# 4. conv_layout after fold_batch_norm (whose folded weights are new constants) and before
#    fuse, so that the layout rides into the fused groups with its convolution.
# 5. fuse after dce: it sees the final dataflow (a value's users decide what joins a group),
#    and groups hold what the rewrites above produced (a folded BN's bias add, say).
# 6. transposed_operands after simplify (whose transposed_product makes dW = dy^T @ x) and
#    before CLEANUP (dce removes the transposes no longer read).
# 7. strided_products after transposed_operands (a 2-D transpose read in place there is not a
#    batched product's) and before CLEANUP (dce removes the layout ops no longer read).
# 8. plan_memory last: it plans the graph the backend gets (any later edit would make its plan
#    stale; verify checks that the plan still matches the graph).
NATIVE_PIPELINE: list[Pass] = [
    *REWRITES, fold_batch_norm, fold_weight_layout, transposed_operands, strided_products,
    *CLEANUP, conv_layout,
    fuse, plan_memory,
]
