"""kiln.optim against torch.optim: 30 steps on fixed gradient sequences, the numpy reference
and the optimizer's graph (run by the graph interpreter) both, in float64 and float32."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiln.compiler.builder import GraphBuilder
from kiln.compiler.errors import KilnError
from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Graph
from kiln.compiler.train import optim
from kiln.compiler.train.step import SCALAR
from kiln.compiler.types import TensorType, dtype_of_numpy

torch = pytest.importorskip("torch", reason="the optimizer tests compare with torch.optim")

STEPS = 30
RTOL = {np.float64: 1e-6, np.float32: 1e-5}

# (kiln optimizer, torch class, shared keyword arguments)
CASES = [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                        weight_decay=0.1, amsgrad=True)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
    (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1,
                                              momentum=0.5, centered=True)),
]
IDS = [f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]


def gradients(dtype, seed=0):
    """Two parameters' initial values and 30 steps of gradients for them."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(STEPS)]
    return params, grads


def torch_trajectory(cls, kwargs, params, grads, lr_factors=None, max_norm=None):
    """The parameters after each step of the torch optimizer."""
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    opt = cls(tparams, **kwargs)
    out = []
    for t, step_grads in enumerate(grads, 1):
        for p, g in zip(tparams, step_grads):
            p.grad = torch.tensor(g)
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        if lr_factors is not None:
            for group in opt.param_groups:
                group["lr"] = kwargs["lr"] * lr_factors(t)
        opt.step()
        out.append([p.detach().numpy().copy() for p in tparams])
    return out


def assert_close(mine, theirs, dtype, what):
    for m, t in zip(mine, theirs):
        assert m.dtype == t.dtype
        np.testing.assert_allclose(m, t, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2,
                                   err_msg=what)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("ours", "cls", "kwargs"), CASES, ids=IDS)
def test_numpy_reference_follows_torch(ours, cls, kwargs, dtype):
    params, grads = gradients(dtype)
    expected = torch_trajectory(cls, kwargs, params, grads)
    opt = ours(**kwargs)
    opt.check()
    names = ["a", "b"]
    values = dict(zip(names, params))
    state = {n: optim.initial_state(opt, values[n]) for n in names}
    for t, step_grads in enumerate(grads, 1):
        values, state = optim.numpy_step(opt, values, dict(zip(names, step_grads)), state, t)
        assert_close([values[n] for n in names], expected[t - 1], dtype, f"step {t}")


def update_graph(opt, params, clip=None):
    """The optimizer's update as a graph: inputs p..., g..., state..., lr, step; outputs the
    new parameters, then the new state."""
    graph = Graph()
    kit = optim.GraphKit(GraphBuilder(graph))

    def typed(x):
        return TensorType(dtype_of_numpy(x.dtype), x.shape)

    ps = [kit.wrap(graph.add_input(f"p{i}", typed(p), None)) for i, p in enumerate(params)]
    gs = [kit.wrap(graph.add_input(f"g{i}", typed(p), None)) for i, p in enumerate(params)]
    states = [{s: kit.wrap(graph.add_input(f"{s}{i}", typed(p), None)) for s in opt.slots()}
              for i, p in enumerate(params)]
    lr = kit.wrap(graph.add_input("lr", SCALAR, None))
    step = kit.wrap(graph.add_input("step", SCALAR, None))
    new_p, new_s = optim.apply_updates(opt, kit, ps, gs, states, lr, step, clip)
    graph.outputs = [v.value for v in new_p] + [s[k].value for s in new_s for k in opt.slots()]
    return graph


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("ours", "cls", "kwargs"), CASES, ids=IDS)
def test_graph_update_follows_torch(ours, cls, kwargs, dtype):
    params, grads = gradients(dtype, seed=1)
    expected = torch_trajectory(cls, kwargs, params, grads)
    opt = ours(**kwargs)
    graph = update_graph(opt, params)
    state = [[np.zeros_like(p) for _ in opt.slots()] for p in params]
    for t, step_grads in enumerate(grads, 1):
        feeds = params + step_grads + [s for st in state for s in st] + [
            np.float64(opt.lr), np.float64(t)]
        outs = run_graph(graph, feeds, {}, {})
        params = outs[:len(params)]
        flat = outs[len(params):]
        state = [flat[i * len(opt.slots()):(i + 1) * len(opt.slots())]
                 for i in range(len(params))]
        assert_close(params, expected[t - 1], dtype, f"step {t}")


def native_update(opt, params, opt_level=1):
    """The update graph of `opt` compiled for the native target (one thread)."""
    from kiln.compiler.driver import Compilation
    from kiln.compiler.elaborate import ElaboratedModel
    from kiln.runtime.native import NativeModel

    model = ElaboratedModel.of_graph("Update", update_graph(opt, params), {})
    return NativeModel(Compilation(model, None, "native", opt_level=opt_level), {}, threads=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("ours", "cls", "kwargs"), CASES, ids=IDS)
def test_native_update_is_one_kernel_per_parameter(ours, cls, kwargs, dtype):
    """Compiled natively, each parameter's whole update (its new value and every new state)
    is one fused kernel with several results, whose values are those of the same graph
    unfused (native -O0, and the graph interpreter) and of the numpy reference, step after
    step; the kernel writes its own results, never the arrays it reads."""
    # a parameter of 1000 elements: the kernel's vector loop and its remainder both run
    params = [p.repeat(40, axis=0)[:, :250] if p.ndim == 2 else p
              for p in gradients(dtype, seed=2)[0]]
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(6)]
    opt = ours(**kwargs, **({"momentum": 0.9} if "momentum" not in kwargs
                            and ours is optim.SGD else {}))
    slots = opt.slots()
    native, unfused = native_update(opt, params), native_update(opt, params, opt_level=0)
    graph = native.lowered().graph
    n = len(params)
    for i in range(n):  # the new value and the new state of parameter i: one fused node
        writers = {graph.outputs[i].node} | {graph.outputs[n + i * len(slots) + k].node
                                             for k in range(len(slots))}
        (writer,) = writers
        assert graph.op(writer) == "fused"
        assert len(graph.node(writer)["types"]) == 1 + len(slots)
    interpreted = update_graph(opt, params)
    values = dict(zip("ab", params))
    state = {name: optim.initial_state(opt, values[name]) for name in "ab"}
    mine = [list(params), [np.zeros_like(p) for p in params for _ in slots]]
    for t, step_grads in enumerate(grads, 1):
        feeds = mine[0] + step_grads + mine[1] + [np.float64(opt.lr), np.float64(t)]
        kept = [f.copy() for f in feeds]
        outs = native(*feeds)
        for f, k in zip(feeds, kept, strict=True):
            np.testing.assert_array_equal(f, k)  # no result written over an operand
        for other in (unfused(*feeds), run_graph(interpreted, feeds, {}, {})):
            assert_close(outs, other, dtype, f"step {t}")
        values, state = optim.numpy_step(opt, values, dict(zip("ab", step_grads)), state, t)
        assert_close(outs, [values[p] for p in "ab"] + [state[p][s] for p in "ab"
                                                         for s in slots], dtype, f"step {t}")
        mine = [list(outs[:n]), list(outs[n:])]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clipping_and_schedule_follow_torch(dtype):
    params, grads = gradients(dtype, seed=2)
    grads = [[g * 5 for g in gs] for gs in grads]  # large enough that clipping acts
    schedule = optim.cosine(total=STEPS, warmup=5)
    kwargs = dict(lr=0.01, weight_decay=0.05)
    expected = torch_trajectory(torch.optim.AdamW, kwargs, params, grads, schedule, 1.0)
    opt = optim.AdamW(**kwargs)
    names = ["a", "b"]
    values = dict(zip(names, params))
    state = {n: optim.initial_state(opt, values[n]) for n in names}
    graph = update_graph(opt, params, clip=1.0)
    gstate = [[np.zeros_like(p) for _ in opt.slots()] for p in params]
    gparams = params
    for t, step_grads in enumerate(grads, 1):
        lr = opt.lr * schedule(t)
        values, state = optim.numpy_step(opt, values, dict(zip(names, step_grads)), state, t,
                                         lr=lr, clip_grad_norm=1.0)
        assert_close([values[n] for n in names], expected[t - 1], dtype, f"numpy step {t}")
        outs = run_graph(graph, gparams + step_grads + [s for st in gstate for s in st]
                         + [np.float64(lr), np.float64(t)], {}, {})
        gparams = outs[:2]
        gstate = [outs[2:4], outs[4:6]]
        assert_close(gparams, expected[t - 1], dtype, f"graph step {t}")


def test_clip_by_global_norm_is_torchs():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((4, 3)) * 3, rng.standard_normal(7)]
    clipped = optim.clip_by_global_norm(optim.NUMPY, grads, 0.5)
    tgrads = [torch.tensor(g) for g in grads]
    tparams = [torch.nn.Parameter(torch.zeros_like(g)) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(tparams, 0.5)
    for c, p in zip(clipped, tparams):
        np.testing.assert_allclose(c, p.grad.numpy(), rtol=1e-12)
    total = math.sqrt(sum(float(np.sum(c * c)) for c in clipped))
    assert total == pytest.approx(0.5, rel=1e-5)


def test_schedules():
    cos = optim.cosine(total=100, warmup=10, min_factor=0.1)
    assert [cos(1), cos(5), cos(10), cos(11)] == [0.1, 0.5, 1.0, 1.0]
    assert cos(56) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos(100) > 0.1 and cos(101) == pytest.approx(0.1) and cos(150) == pytest.approx(0.1)
    assert optim.cosine(total=1)(1) == 1.0  # one step of cosine still learns
    step = optim.step_decay(step_size=3, gamma=0.5)
    # torch StepLR(step_size=3, gamma=0.5): the lr used by updates 1..7
    assert [step(t) for t in range(1, 8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert optim.constant()(12345) == 1.0


@pytest.mark.parametrize("bad", [
    lambda: optim.SGD(lr=-1.0),
    lambda: optim.SGD(lr=0.1, nesterov=True),
    lambda: optim.Adam(betas=(0.9, 1.5)),
    lambda: optim.Adam(lr=float("nan")),
    lambda: optim.RMSprop(alpha=2.0),
])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(KilnError) as err:
        bad().check()
    assert err.value.code == "K0831"


@pytest.mark.parametrize(("total", "warmup"), [(1, 0), (7, 0), (30, 0), (30, 5)])
def test_cosine_is_torchs_cosine_annealing_after_the_warm_up(total, warmup):
    """Each step's learning rate is what torch's CosineAnnealingLR(T_max=total - warmup,
    eta_min) gives the same update after the warm-up (scheduler.step() after each
    optimizer.step()), and step/warmup during it."""
    torch = pytest.importorskip("torch", reason="torch is needed for its scheduler")
    lr, eta_min = 0.1, 0.02
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup,
                                                       eta_min=eta_min)
    theirs = []
    for _ in range(total - warmup):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cos = optim.cosine(total=total, warmup=warmup, min_factor=eta_min / lr)
    ours = [lr * cos(t) for t in range(1, total + 1)]
    np.testing.assert_allclose(ours[:warmup], [lr * t / warmup for t in range(1, warmup + 1)])
    np.testing.assert_allclose(ours[warmup:], theirs, rtol=1e-12)


def test_schedule_arguments_are_checked():
    with pytest.raises(KilnError, match="warmup"):
        optim.cosine(total=10, warmup=10)
    with pytest.raises(KilnError, match="step_size"):
        optim.step_decay(0)


def test_optimizer_config_round_trips():
    for opt in (optim.SGD(lr=0.1, momentum=0.9, nesterov=True), optim.AdamW(betas=(0.8, 0.9)),
                optim.RMSprop(centered=True)):
        assert optim.optimizer_from_config(opt.config()) == opt
    with pytest.raises(KilnError) as err:
        optim.optimizer_from_config({"name": "lion"})
    assert err.value.code == "K0832"
