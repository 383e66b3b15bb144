"""Search spaces: arch strings and JSON, evolution operators, block keys, builds, FLOPs, bad input."""

import json
import re

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgequery.errors import EdgeQueryError
from edgequery.models import build_embedding_net
from edgequery.spaces import SPACES, build_trunk_from_string, get_space, parse_arch
from edgequery.spaces.base import BlockSpec, parse_key

NAMES = list(SPACES)
KEY = re.compile(r"^[a-z_]+\|in=\d+x\d+x\d+\|out=\d+x\d+x\d+(\|[a-z]+=[a-z0-9.]+)*$")


def archs(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)] + [space.largest(), space.smallest()]


@pytest.mark.parametrize("name", NAMES)
def test_canonical_string_and_json_round_trip(name):
    space = get_space(name)
    seen = set()
    for arch in archs(space, 50):
        text = str(arch)
        assert text.startswith(f"{name}:") and " " not in text
        assert space.parse(text) == arch
        assert str(space.parse(text)) == text
        assert space.parse(json.loads(json.dumps(arch.to_dict()))) == arch
        assert parse_arch(text) [1] == arch and parse_arch(arch.to_dict())[1] == arch
        seen.add(text)
    assert len(seen) > 45  # sampling covers the space, not a handful of archs


def test_non_canonical_spellings_parse_to_the_canonical_string():
    space = get_space("mbv3")
    arch = space.parse(" mbv3:r32,w1,k3e4-k5e6,k3e3-k3e3,k5e4-k5e4,k3e6-k3e6,k7e3-k7e3 ")
    assert str(arch) == "mbv3:r32,w1.0,k3e4-k5e6,k3e3-k3e3,k5e4-k5e4,k3e6-k3e6,k7e3-k7e3"
    assert arch.depths == (2, 2, 2, 2, 2)
    sh = get_space("shufflenet")
    text = "shufflenet:r32," + ",".join("-".join(["k3c1"] * d) for d in (4, 4, 8, 4))
    assert str(sh.parse(text)) == text.replace("c1", "c1.0")


@pytest.mark.parametrize("name", NAMES)
def test_mutation_and_crossover_stay_in_the_space(name):
    space = get_space(name)
    rng = np.random.default_rng(1)
    pool = archs(space, 20)
    changed = 0
    for a, b in zip(pool, pool[1:]):
        assert space.mutate(a, 0.0, rng) == a
        m = space.mutate(a, 0.5, rng)
        assert space.parse(str(m)) == m
        changed += m != a
        c = space.crossover(a, b, rng)
        assert space.parse(str(c)) == c
        assert c.resolution in (a.resolution, b.resolution)
        for sc, sa, sb in zip(c.stages, a.stages, b.stages):
            assert len(sc) in (len(sa), len(sb))
            for j, block in enumerate(sc):  # every gene comes from a parent that has that block
                genes = [s[j] for s in (sa, sb) if j < len(s)]
                for g in range(2):
                    assert block[g] in [x[g] for x in genes]
    assert changed >= len(pool) - 3


@pytest.mark.parametrize("name", NAMES)
def test_blocks_cover_the_whole_net(name):
    space = get_space(name)
    for arch in archs(space, 6, seed=2):
        blocks = space.blocks(arch, embed_dim=64)
        assert blocks[0].kind == "stem" and blocks[0].in_shape == (3, arch.resolution, arch.resolution)
        assert blocks[-1].kind == "embed" and blocks[-1].out_shape == (64, 1, 1)
        for blk, nxt in zip(blocks, blocks[1:]):
            assert blk.out_shape == nxt.in_shape, (blk.key, nxt.key)
        for blk in blocks:
            assert KEY.match(blk.key), blk.key
            assert parse_key(blk.key)[1:3] == (blk.in_shape, blk.out_shape)
            out = space.build_block(blk).eval()(torch.randn(2, *blk.in_shape))
            assert out.shape[0] == 2 and out[0].numel() == int(np.prod(blk.out_shape)), blk.key

        # the built net is exactly its blocks: same FLOPs and parameters as their sum
        trunk, dim = space.build(arch)
        assert trunk.resolution == arch.resolution and trunk.arch == str(arch)
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        assert trunk.eval()(x).shape == (2, dim)
        per_block = 0
        for blk in blocks:
            with FlopCounterMode(display=False) as counter:
                space.build_block(blk).eval()(torch.randn(1, *blk.in_shape))
            per_block += counter.get_total_flops()
        cost = space.cost(arch, embed_dim=64)
        assert cost["flops"] == per_block
        assert cost["params"] == sum(p.numel() for b in blocks for p in space.build_block(b).parameters())


def test_flops_match_a_hand_count():
    """FlopCounterMode counts 2 x multiply-accumulates, depthwise convs included."""
    mb = get_space("mbv3")
    # 24 -> expand 96 (8x8) -> depthwise 5x5 stride 2 (4x4) -> SE 96->24->96 -> project 40
    macs = 8 * 8 * 24 * 96 + 4 * 4 * 96 * 25 + 96 * 24 * 2 + 4 * 4 * 96 * 40
    blk = BlockSpec("mbconv|in=8x8x24|out=4x4x40|k=5|e=4|s=2|se=1|act=relu", (24, 8, 8), (40, 4, 4))
    with FlopCounterMode(display=False) as c:
        mb.build_block(blk).eval()(torch.randn(1, 24, 8, 8))
    assert c.get_total_flops() == 2 * macs
    sh = get_space("shufflenet")
    # stride 1: half (32 ch) passes, half goes 32 -> 24 -> depthwise 5x5 -> 32
    macs = 8 * 8 * 32 * 24 + 8 * 8 * 24 * 25 + 8 * 8 * 24 * 32
    blk = BlockSpec("shuffle|in=8x8x64|out=8x8x64|k=5|mid=24|s=1", (64, 8, 8), (64, 8, 8))
    with FlopCounterMode(display=False) as c:
        sh.build_block(blk).eval()(torch.randn(1, 64, 8, 8))
    assert c.get_total_flops() == 2 * macs
    costs = [mb.cost(a)["flops"] for a in (mb.smallest(), mb.sample(np.random.default_rng(0)), mb.largest())]
    assert costs[0] < costs[1] < costs[2]


def test_arch_strings_build_through_the_model_registry():
    space = get_space("mbv3")
    arch = space.parse("mbv3:r24,w0.75,k3e4-k5e6,k3e3-k3e3,k5e4-k5e4,k3e6-k3e6,k7e3-k7e3")
    net = build_embedding_net(str(arch), embed_dim=32, num_classes=10).eval()
    assert net.trunk.resolution == 24
    out = net(torch.randn(3, 3, 32, 32))  # 32px images are resized to the arch's 24px
    assert out.shape == (3, 32) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    trunk, dim = build_trunk_from_string(arch.to_dict())
    assert dim == space.feature_dim and set(trunk.state_dict()) == set(net.trunk.state_dict())
    sh = get_space("shufflenet").smallest()
    assert build_embedding_net(str(sh), 16, 10).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 16)


MBV3_OK = "mbv3:r32,w1.0,k3e4-k5e6,k3e3-k3e3,k5e4-k5e4,k3e6-k3e6,k7e3-k7e3"
SHUFFLE_OK = "shufflenet:r32," + ",".join("-".join(["k3c1.0"] * d) for d in (4, 4, 8, 4))


@pytest.mark.parametrize("text, needles", [
    (MBV3_OK.replace("k5e6", "k9e6"), ["kernel of stage 1 block 2", "9", "3, 5, 7"]),
    (MBV3_OK.replace("k5e6", "k5e5"), ["expansion of stage 1 block 2", "3, 4, 6"]),
    (MBV3_OK.replace("k3e3-k3e3", "k3e3-k3e3-k3e3-k3e3-k3e3", 1), ["depth of stage 2", "5", "2, 3, 4"]),
    (MBV3_OK.replace("k3e4-k5e6", "k3e4"), ["depth of stage 1", "2, 3, 4"]),
    (MBV3_OK.replace("r32", "r30"), ["resolution", "30", "24, 28, 32"]),
    (MBV3_OK.replace("w1.0", "w2"), ["width", "2.0", "0.5, 0.75, 1.0"]),
    (MBV3_OK.replace("k5e6", "conv3"), ["stage 1 block 2", "conv3", "k<kernel>e<expansion>"]),
    (MBV3_OK.rsplit(",", 1)[0], ["4 stage groups", "5 stages"]),
    (SHUFFLE_OK.replace("k3c1.0", "k9c1.0", 1), ["op of stage 1 block 1", "k9", "k3, k5, k7, x3"]),
    (SHUFFLE_OK.replace("k3c1.0", "k3c0.3", 1), ["channel scale of stage 1 block 1", "0.5, 0.75, 1.0, 1.25, 1.5"]),
    (SHUFFLE_OK.replace("-k3c1.0", "", 1), ["number of blocks of stage 1", "3", "4"]),
    ("resnet:r32,whatever", ["unknown search space 'resnet'", "mbv3, shufflenet"]),
    ("mbv3", ["not an arch string", "mbv3:"]),
    ("supernet:mbv3", ["whole supernet"]),
])
def test_bad_arch_strings_name_the_field_and_the_allowed_values(text, needles):
    with pytest.raises(EdgeQueryError) as err:
        build_trunk_from_string(text)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg


def test_bad_json_archs_and_wrong_spaces():
    mb, sh = get_space("mbv3"), get_space("shufflenet")
    d = mb.parse(MBV3_OK).to_dict()
    d["stages"][2][0]["expand"] = 8
    with pytest.raises(EdgeQueryError, match=r"expansion of stage 3 block 1.*one of: 3, 4, 6"):
        mb.parse(d)
    d = mb.parse(MBV3_OK).to_dict()
    d["stages"][0][0] = {"kernel": 3}
    with pytest.raises(EdgeQueryError, match="stage 1 block 1"):
        mb.parse(d)
    with pytest.raises(EdgeQueryError, match="lacks width"):
        mb.parse({"space": "mbv3", "resolution": 32, "stages": []})
    with pytest.raises(EdgeQueryError, match="no \"space\" field"):
        parse_arch({"resolution": 32})
    with pytest.raises(EdgeQueryError, match="belongs to space 'shufflenet', not 'mbv3'"):
        mb.parse(SHUFFLE_OK)
    with pytest.raises(EdgeQueryError, match="belongs to space 'mbv3', not 'shufflenet'"):
        sh.parse(mb.parse(MBV3_OK).to_dict())
    with pytest.raises(EdgeQueryError, match="unknown search space"):
        get_space("nasnet")
    with pytest.raises(EdgeQueryError, match="not a block of the mbv3 space"):
        mb.build_block(BlockSpec("shuffle|in=8x8x64|out=8x8x64|k=5|mid=24|s=1", (64, 8, 8), (64, 8, 8)))
    with pytest.raises(EdgeQueryError, match="lacks a valid in="):
        parse_key("mbconv|k=3")


@pytest.mark.parametrize("name, options, res", [("mbv3", dict(resolutions=(48,), widths=(0.5,), depths=(2,)), 48),
                                                ("shufflenet", dict(resolutions=(64,), channels=(0.5,)), 64)])
def test_a_checkpoint_of_a_non_default_space_rebuilds_in_that_space(name, options, res, tmp_path):
    """The stored space config, not the default space, rebuilds the arch (the default has no 48/64 px)."""
    from edgequery.checkpoint import load_checkpoint, save_checkpoint
    from edgequery.models import model_from_checkpoint, model_spec

    space = get_space(name, **options)
    arch = str(space.sample(np.random.default_rng(1)))
    with pytest.raises(EdgeQueryError, match="resolution"):
        parse_arch(arch)  # the default space cannot read it
    torch.manual_seed(0)
    net = build_embedding_net(arch, 16, 10, space=space).eval()
    spec = model_spec(arch, 16, 10, space=space)
    assert spec["space"] == space.config() and spec["arch"] == arch
    save_checkpoint(tmp_path / "q.pt", {"kind": "query", "model": spec, "state_dict": net.state_dict()})
    ck = load_checkpoint(tmp_path / "q.pt", "query")
    rebuilt = model_from_checkpoint(ck)
    assert rebuilt.trunk.resolution == res
    x = torch.randn(2, 3, res, res)
    assert torch.equal(rebuilt(x), net(x))
    with pytest.raises(EdgeQueryError, match="belongs to space"):
        parse_arch(arch, get_space("shufflenet" if name == "mbv3" else "mbv3"))
