import copy

import pytest
import timm
import torch
from torch import nn

from fedsq_hf import DualCopy, GateCache, GatingError, find_gateable_modules
from reference import forward_with_regimes, record_regimes

ARCHS = ["resnet18", "resnet10t", "vgg11", "mobilenetv2_100", "regnetx_002"]


class AllKinds(nn.Module):
    """Every gate kind, one ReLU module called twice, in-place and out-of-place units."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.leaky = nn.LeakyReLU(0.1)
        self.prelu = nn.PReLU(8, init=0.2)
        self.hardtanh = nn.Hardtanh(-0.5, 0.5)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x) - 0.1)  # the same ReLU module, second call
        x = self.pool(self.relu6(3 * x))
        x = self.prelu(self.leaky(self.conv3(x)))
        x = self.hardtanh(x)
        return self.head(x.mean((2, 3)))


def build(arch):
    torch.manual_seed(0)
    if arch == "all_kinds":
        return AllKinds().eval()
    return timm.create_model(arch, pretrained=False, num_classes=7).eval()


def perturb_(module, scale=0.5):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() if p.numel() > 1 else 1.0))


@pytest.mark.parametrize("arch", ARCHS + ["all_kinds"])
def test_fresh_dual_copy_equals_plain_model(arch):
    model = build(arch)
    plain = copy.deepcopy(model)
    dual = DualCopy(model).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dual(x), plain(x))


@pytest.mark.parametrize("arch", ARCHS + ["all_kinds"])
def test_perturbed_copy_uses_structural_gates(arch):
    model = build(arch)
    pretrained = copy.deepcopy(model)
    dual = DualCopy(model).eval()
    perturb_(dual.quantitative)
    x = torch.randn(3, 3, 32, 32)

    perturbed_plain = build(arch)
    perturbed_plain.load_state_dict(dual.quantitative.state_dict())  # same keys as a plain model
    with torch.no_grad():
        expected = forward_with_regimes(perturbed_plain, x, record_regimes(pretrained, x))
        got = dual(x)
        own_gates = perturbed_plain(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, own_gates, atol=1e-3), "perturbation too small to tell the gates apart"


def test_ungated_block_runs_own_regimes_then_restores_gates():
    dual = DualCopy(build("all_kinds")).eval()
    perturb_(dual.quantitative)
    plain = build("all_kinds")
    plain.load_state_dict(dual.quantitative.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        gated = dual(x)
        with dual.ungated():
            assert dual.structural is not None and not dual.gating  # the structural copy is kept
            assert torch.equal(dual(x), plain(x))
        assert dual.gating and torch.equal(dual(x), gated)
    with pytest.raises(ZeroDivisionError), dual.ungated():
        1 / 0
    assert torch.equal(dual(x).detach(), gated)  # restored after an error too


def test_gradients_flow_through_fixed_gates_like_reference():
    model = build("all_kinds")
    pretrained = copy.deepcopy(model)
    dual = DualCopy(model).eval()
    perturb_(dual.quantitative)
    reference = build("all_kinds")
    reference.load_state_dict(dual.quantitative.state_dict())
    x = torch.randn(4, 3, 16, 16)
    dual(x).square().sum().backward()
    forward_with_regimes(reference, x, record_regimes(pretrained, x)).square().sum().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in dual.quantitative.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6)


def test_structural_copy_is_frozen_and_hidden():
    dual = DualCopy(build("resnet10t"))
    structural = dual.structural
    assert not structural.training
    assert all(not p.requires_grad for p in structural.parameters())
    own = {id(p) for p in dual.parameters()}
    assert not own & {id(p) for p in structural.parameters()}
    assert all(k.startswith("quantitative.") for k in dual.state_dict())
    dual.train()
    assert not structural.training
    dual.to(torch.float64)
    assert next(structural.parameters()).dtype == torch.float64


def test_training_changes_only_quantitative_weights():
    dual = DualCopy(build("resnet10t"))
    frozen = {k: v.clone() for k, v in dual.structural.state_dict().items()}
    before = {k: v.clone() for k, v in dual.quantitative.state_dict().items()}
    opt = torch.optim.SGD(dual.parameters(), lr=0.1)
    dual.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(dual(torch.randn(4, 3, 32, 32)), torch.randint(0, 7, (4,))).backward()
        assert all(p.grad is None for p in dual.structural.parameters())
        opt.step()
    for k, v in dual.structural.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    changed = [k for k, v in dual.quantitative.state_dict().items() if not torch.equal(v, before[k])]
    assert any("conv" in k for k in changed) and any("running_mean" in k for k in changed)


class WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.relu, self.fc2 = nn.Linear(4, 4), nn.GELU(), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.act(self.fc1(x))))


def test_ungateable_ops_are_named_and_opt_in_leaves_them_free():
    with pytest.raises(GatingError, match=r"act \(GELU\).*allow_ungated=True"):
        DualCopy(WithGELU())
    with pytest.warns(UserWarning, match="GELU"):
        dual = DualCopy(WithGELU(), allow_ungated=True)
    assert list(dual.sites) == ["relu"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(dual(x), dual.quantitative.fc2(torch.relu(dual.quantitative.act(dual.quantitative.fc1(x)))))


def test_backbone_without_piecewise_linear_ops_is_refused():
    with pytest.raises(GatingError, match="no piecewise-linear op"):
        DualCopy(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    with pytest.raises(GatingError, match="SiLU"):
        DualCopy(timm.create_model("efficientnet_b0", pretrained=False))


def test_gated_ops_subset_leaves_other_kinds_free():
    gated, _ = find_gateable_modules(build("vgg11"), gated_ops=["max_pool2d"])
    assert gated and set(gated.values()) == {"max_pool2d"}
    with pytest.raises(GatingError, match="Unknown gated_ops"):
        find_gateable_modules(build("vgg11"), gated_ops=["swish"])


def test_quantitative_copy_alone_fails_clearly():
    dual = DualCopy(build("all_kinds"))
    with pytest.raises(GatingError, match="without a structural gate"):
        dual.quantitative(torch.randn(1, 3, 8, 8))


def test_gate_cache_reproduces_uncached_training_step():
    x, y, keys = torch.randn(6, 3, 32, 32), torch.randint(0, 7, (6,)), torch.arange(10, 16)
    dual = DualCopy(build("resnet10t"))
    cached = copy.deepcopy(dual)
    cache = cached.enable_gate_cache(1 << 24)
    perturb_(dual.quantitative), perturb_(cached.quantitative)
    for model in (dual, cached):
        model(x, gate_keys=keys)  # fills the cache (no-op without one)
    assert len(cache) == 6 and cache.misses == 1
    loss = nn.functional.cross_entropy(dual(x), y)
    loss_c = nn.functional.cross_entropy(cached(x, gate_keys=keys), y)
    assert cache.hits == 1
    torch.testing.assert_close(loss_c, loss)
    loss.backward(), loss_c.backward()
    for (n, p), (_, q) in zip(dual.named_parameters(), cached.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


def test_gate_cache_respects_memory_bound_and_detects_changed_inputs():
    dual = DualCopy(build("all_kinds"))
    x = torch.randn(8, 3, 16, 16)
    probe = GateCache(1 << 20)
    probe.store(torch.arange(8), x, dual.compute_gates(x))
    row = probe.bytes_used // 8
    cache = dual.enable_gate_cache(3 * row)
    dual(x, gate_keys=torch.arange(8))
    assert len(cache) == 3 and cache.bytes_used <= 3 * row
    dual(x[:3], gate_keys=torch.arange(3))
    assert cache.hits == 1
    with pytest.raises(GatingError, match="random augmentation"):
        dual(x[:3].flip(-1), gate_keys=torch.arange(3))


def test_bit_packing_round_trips_odd_sizes():
    from fedsq_hf.gate_cache import _pack_bits, _unpack_bits

    mask = torch.rand(5, 3, 7, 3) > 0.5
    unpacked = _unpack_bits(_pack_bits(mask), (3, 7, 3))
    assert unpacked.dtype == torch.bool and torch.equal(unpacked, mask)


def test_cached_gates_equal_fresh_gates_for_every_kind():
    dual = DualCopy(build("all_kinds"))
    perturb_(dual.quantitative)
    x, keys = torch.randn(4, 3, 16, 16), torch.arange(4)
    dual.enable_gate_cache(1 << 20)
    dual(x, gate_keys=keys)
    cached = dual.gate_cache.lookup(keys, x)
    for (site, fresh), (_, stored) in zip(dual.compute_gates(x), cached):
        for a, b in zip(fresh if isinstance(fresh, tuple) else (fresh,), stored if isinstance(stored, tuple) else (stored,)):
            assert a.dtype == b.dtype and torch.equal(a, b), site
    with torch.no_grad():
        torch.testing.assert_close(dual(x, gate_keys=keys), dual(x))


def test_gate_cache_saved_and_loaded_gives_the_same_gates(tmp_path):
    """Every gate kind (masks, sides, max-pool argmaxes) survives `save` + `load`, as a Flower site's
    cache does between messages; a cache over the memory bound loads empty."""
    dual = DualCopy(build("all_kinds"))
    x, keys = torch.randn(4, 3, 16, 16), torch.arange(4)
    dual.enable_gate_cache(1 << 20)
    dual(x, gate_keys=keys)
    dual.gate_cache.save(tmp_path / "gates.safetensors")
    loaded = GateCache.load(tmp_path / "gates.safetensors", 1 << 20)
    assert len(loaded) == 4 and loaded.bytes_used == dual.gate_cache.bytes_used
    for (site, fresh), (_, stored) in zip(dual.compute_gates(x), loaded.lookup(keys, x)):
        for a, b in zip(fresh if isinstance(fresh, tuple) else (fresh,), stored if isinstance(stored, tuple) else (stored,)):
            assert a.dtype == b.dtype and torch.equal(a, b), site
    with pytest.raises(GatingError, match="random augmentation"):
        loaded.lookup(keys, x.flip(-1))
    assert len(GateCache.load(tmp_path / "gates.safetensors", 8)) == 0
