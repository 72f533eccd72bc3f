"""Smoke tests of the benchmark code: cases, owners, implementations, sweep, JSON, table, plot."""
import json

import pytest
import torch
from torch import nn

import maskops
from maskops import reference
from maskops.bench import cli, cases, impls, overhead, report, study, sweep
from maskops.bench.models import MODELS
from maskops.bench.timing import Timing


def fake_timer(fn):
    fn()
    return Timing(1.0, "fake")


TINY = (
    cases.Case("linear_m4_n24_k40", "linear", n=24, k=40, m=4, settings=(("random", 0.5),)),
    cases.Case("linear_mixed3_m6_n24_k40", "linear", n=24, k=40, m=6, tasks=3,
               settings=(("block", 0.5),)),
    cases.Case("conv_3x3_c8_h5_b2", "conv2d", n=8, k=8, batch=2, size=5, channels_last=True,
               settings=(("random", 0.25),)),
)


def test_required_gpu_cases():
    settings = {case.name: case.settings for case in cases.GPU_CASES}
    assert settings == {
        "linear_m16_n4096_k4096": (("random", 0.5), ("block", 0.25)),
        "linear_m4096_n4096_k4096": (("random", 0.5),),
        "conv_r50_3x3_c256_h14_b32": (("random", 0.5),),
        "conv_r50_3x3_c512_h7_b1": (("random", 0.5),),
        "linear_mixed8_m64_n4096_k4096": (("random", 0.5),),
    }
    by_name = {case.name: case for case in cases.GPU_CASES}
    assert by_name["conv_r50_3x3_c256_h14_b32"].channels_last
    assert by_name["linear_mixed8_m64_n4096_k4096"].tasks == 8
    assert impls.baseline_name(by_name["linear_mixed8_m64_n4096_k4096"]) == "loop"


def test_cpu_target_cases():
    by_name = {case.name: case for case in cases.CPU_CASES}
    for m in (1, 16, 256):
        case = by_name[f"linear_m{m}_n4096_k4096"]
        assert case.settings[0] == ("random", pytest.approx(2 / 3))
        assert case.settings[1:] == ((("block", 0.25), ("block", 0.5)) if m < 256 else ())
    assert by_name["conv_r50_3x3_c256_h14_b1"].settings == (("block", 0.25), ("block", 0.5))
    assert impls.impl_names(by_name["linear_m1_n4096_k4096"], "cpu", torch.float32)[:3] == \
        ["naive", "cached", "torch"]


@pytest.mark.parametrize("pattern", cases.PATTERNS)
@pytest.mark.parametrize("density", [0.0, 0.25, 2 / 3, 1.0])
def test_owner_density(pattern, density):
    generator = torch.Generator().manual_seed(1)
    owner = cases.make_owner((256, 192), pattern, density, 2, generator)
    assert owner.dtype == torch.uint8
    visible = reference.visible(owner, 2)
    assert visible.float().mean().item() == pytest.approx(density, abs=1 / 12)
    assert set(owner[~visible].unique().tolist()) <= {0, 3}
    if pattern == "block":  # constant visibility over each block PackNet would prune (32 x 48)
        blocks = visible.reshape(8, 32, 4, 48)
        assert (blocks == blocks[:, :1, :, :1]).all()


def test_mixed_owner_nests_tasks():
    owner = cases.make_owner((64, 64), "random", 0.8, 8, torch.Generator().manual_seed(0))
    seen = [reference.visible(owner, t).float().mean().item() for t in range(1, 9)]
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_impls_match_reference(case):
    pattern, density = case.settings[0]
    inputs = cases.make_inputs(case, pattern, density, torch.float64, "cpu")
    op = reference.task_linear if case.op == "linear" else reference.task_conv2d
    kwargs = {} if case.op == "linear" else {"padding": inputs.padding}
    expected = op(inputs.x, inputs.weight, inputs.owner, inputs.task, **kwargs)
    names = ["loop" if case.mixed else "naive", "cached", "torch"]
    for name in names:
        run = impls.build(name, case, inputs)
        with maskops.use_backend(run.backend):
            torch.testing.assert_close(run.fn(), expected, msg=name)


def test_tiny_sweep_rows(tmp_path):
    results = sweep.run(TINY, [torch.float32], "cpu", fake_timer, quick=True, impls=None,
                        show_progress=False)
    rows = [r for r in results if r["op"] != "copy"]
    assert {(r["case"], r["impl"]) for r in rows} >= {
        ("linear_m4_n24_k40", "naive"), ("linear_mixed3_m6_n24_k40", "loop"),
        ("conv_3x3_c8_h5_b2", "cached"), ("conv_3x3_c8_h5_b2", "torch")}
    assert all(not r.get("error") and r["rel_err"] < 1e-5 for r in rows)
    assert all(r["gbps"] is not None for r in rows if r["case"].startswith("linear"))
    copy = results[-1]
    assert copy["impl"] == "copy" and copy["gbps"] > 0


def test_cli_writes_json_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "timer_for", lambda device, quick: fake_timer)
    monkeypatch.setattr(cli.case_defs, "cases_for", lambda device: TINY)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = cli.main(["--device", "cpu", "--density", "0.25", "0.75", "--pattern", "random",
                     "--json", str(out), "--plot", str(png), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"device", "torch", "triton", "cuda", "date", "results"} <= set(data)
    fields = {"op", "case", "dtype", "pattern", "density", "impl", "median_ms", "gbps"}
    assert all(fields <= set(row) for row in data["results"])
    first = [(r["impl"], r["density"]) for r in data["results"] if r["case"] == TINY[0].name]
    names = impls.impl_names(TINY[0], "cpu", torch.float32)
    assert names[:3] == ["naive", "cached", "torch"]
    assert first == [(impl, d) for d in (0.25, 0.75) for impl in names]
    assert data["results"][-1]["impl"] == "copy"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(impl, ms, case="c", density=0.5):
    return {"op": "linear", "case": case, "dtype": "float32", "pattern": "random",
            "density": density, "impl": impl, "median_ms": ms, "gbps": None}


def test_format_table_ratios():
    table = report.format_table([_row("naive", 8.0), _row("cached", 1.0), _row("cpu", 2.0),
                                 _row("loop", 6.0, case="m"), _row("cpu", 3.0, case="m")])
    lines = table.splitlines()
    assert lines[0] == ("| case | dtype | pattern | density | impl | median ms | "
                        "speedup vs naive | ratio vs cached |")
    assert lines[4] == "| c | float32 | random | 0.5 | cpu | 2 | 4 | 0.5 |"
    assert lines[6] == "| m | float32 | random | 0.5 | cpu | 3 | 2 |  |"


def test_plot_speedups():
    from maskops.bench.plot import speedups
    panels = speedups([_row("naive", 4.0), _row("cpu", 2.0), _row("naive", 4.0, density=0.25),
                       _row("cpu", 1.0, density=0.25)])
    assert panels == {("c", "float32"): {("cpu", "random"): [(0.5, 2.0), (0.25, 4.0)]}}


def test_plot_latency_panels(tmp_path):
    from maskops.bench.plot import latencies, plot_latency
    rows = [{"dtype": "float32", "pattern": "p", "task": t, "batch": b, "impl": i, "median_ms": ms}
            for t, b, i, ms in [(3, 1, "cached", 1.0), (3, 16, "cached", 8.0), (3, 1, "cpu+compile", 2.0),
                                ("mixed", 4, "cpu-loop", 5.0)]]
    assert latencies(rows) == {("float32", "p", "task 3", "eager"): {"cached": [(1, 1.0), (16, 8.0)]},
                               ("float32", "p", "task 3", "compile"): {"cpu": [(1, 2.0)]},
                               ("float32", "p", "mixed", "eager"): {"cpu-loop": [(4, 5.0)]}}
    plot_latency(rows, str(tmp_path / "latency.png"))
    assert (tmp_path / "latency.png").stat().st_size > 0


def test_packnet_owners_come_from_packnet():
    model = nn.Sequential(nn.Linear(300, 300), nn.MultiheadAttention(16, 2))
    owners = study.packnet_owners(model, 0.75, 3)
    assert set(owners) == {("0", "weight"), ("1", "in_proj_weight"), ("1.out_proj", "weight")}
    for task in (1, 2, 3):
        assert (owners[("0", "weight")] == task).float().mean().item() == pytest.approx(
            0.25 * 0.75 ** (task - 1), abs=0.01)
    assert type(model[0]) is nn.Linear  # the base model is left alone


def test_study_variants_agree():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    results = study.run(model, "tiny", tasks=3, ratios=[0.5], batches=[2], resolution=6,
                        device="cpu", dtype=torch.float32, timer=fake_timer, impls=["naive", "cached", "torch"],
                        show_progress=False)
    assert [r["impl"] for r in results] == ["naive", "cached", "torch"]
    assert all(r["rel_err"] < 1e-5 for r in results)
    naive, cached, torch_row = (r["weight_mb"] for r in results)
    assert cached / naive == pytest.approx(3 * 4 / 5) and torch_row == naive
    assert results[0]["density"] == pytest.approx(0.875, abs=0.05)


class _TinyAttention(nn.Module):
    """A conv stem, then self-attention over the pixels: every masked kind of weight."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("compile_too", [False, True])
def test_study_mixed_batches_agree(compile_too):
    results = study.run(_TinyAttention(), "tiny", tasks=3, ratios=[0.5], batches=[4], resolution=4,
                        device="cpu", dtype=torch.float32, timer=fake_timer,
                        impls=["naive", "cached", "cpu"], show_progress=False, mixed=True,
                        compile_too=compile_too, rounds=1)
    names = ["naive", "cached", "cpu", "cpu-loop"]
    assert [r["impl"] for r in results] == names + ([f"{n}+compile" for n in names] if compile_too else [])
    assert all(r["rel_err"] < 1e-5 and r["task"] == "mixed" for r in results)
    assert results[0]["case"] == "tiny_b4_r4_mixed3"


def test_study_interleaves_variants_and_takes_the_median_round():
    """The machine slows down during the run: every variant sees the drift alike."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    clock = iter(range(1, 100))

    def drifting_timer(fn):
        fn()
        return Timing(float(next(clock)), "fake")

    results = study.run(model, "tiny", tasks=2, ratios=[0.5], batches=[1], resolution=4, device="cpu",
                        dtype=torch.float32, timer=drifting_timer, impls=["naive", "cached"],
                        show_progress=False, rounds=3)
    # rounds: (naive 1, cached 2), (3, 4), (5, 6)
    assert [(r["impl"], r["median_ms"], r["rounds"]) for r in results] == [("naive", 3.0, 3), ("cached", 4.0, 3)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_run(name):
    model = MODELS[name](num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_cpu_timer_measures():
    from maskops.bench.timing import cpu_timer
    calls = []
    timing = cpu_timer(min_run_time=0.01)(lambda: calls.append(1))
    assert timing.method == "torch.utils.benchmark" and 0 < timing.median_ms < 1 and calls


def fake_pair(fn, baseline):
    fn(), baseline()
    return overhead.Pair(2.0, 1.0, 2.0)


def test_overhead_rows_and_table():
    rows = overhead.op_calls(fake_pair) + overhead.forward_backward(fake_pair) \
        + overhead.models(fake_pair, compile_too=False) + overhead.host_reads()
    groups = {row["group"] for row in rows}
    assert groups == {"op", "fwd+bwd", "model", "host reads"}
    assert len([r for r in rows if r["group"] == "op"]) == 4
    assert all(r["reads"] == 0 for r in rows if r["group"] == "host reads")
    table = overhead.format_table(rows)
    assert "| op | task_linear (4, 64) x (64, 64) | 2.0 us | 1.0 us | 2.00x |" in table


def test_side_by_side_compares_what_it_is_given():
    slow = overhead.side_by_side(lambda: sum(range(2000)), lambda: None, rounds=3, block_ms=1)
    assert slow.ratio > 1 and slow.us > slow.baseline_us


def test_overhead_cli_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(overhead, "side_by_side", fake_pair)
    path = tmp_path / "overhead.json"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["--overhead", "--no-compile", "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads(path.read_text())
    assert data["overhead"] and data["threads"] == 1 and data["results"][0]["group"] == "op"


@pytest.mark.parametrize("structure", ["block", "channel"])
def test_study_structured_owners_and_every_task(structure):
    owner = study.packnet_owners(nn.Conv2d(64, 256, 3), 0.75, 4, structure=structure)[("", "weight")]
    rows = owner.reshape(256, -1)
    if structure == "channel":
        assert all(len(set(row.tolist())) == 1 for row in rows)  # whole output channels
    else:
        assert all(len(set(rows[r:r + 32, c:c + 128].flatten().tolist())) == 1
                   for r in range(0, 256, 32) for c in range(0, 576, 128))  # whole 32 x 128 blocks
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    results = study.run(model, "tiny", tasks=3, ratios=[0.5], batches=[1], resolution=6,
                        device="cpu", dtype=torch.float32, timer=fake_timer, impls=["cached", "cpu"],
                        show_progress=False, structure=structure, each_task=True)
    assert [(r["task"], r["impl"]) for r in results] == [(t, i) for t in (1, 2, 3) for i in ("cached", "cpu")]
    densities = [r["density"] for r in results if r["impl"] == "cpu"]
    assert densities == sorted(densities) and all(r["rel_err"] < 1e-5 for r in results)


def test_results_say_which_cpu_loops_ran():
    before = maskops.isa.active()
    try:
        maskops.isa.use("generic")
        header = report.environment("cpu")
        assert header["cpu_isa"] == "generic" and "generic" in header["cpu_isas"]
    finally:
        maskops.isa.use(before)
