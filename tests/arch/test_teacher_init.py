import torch

from pocketdiff.arch import create, get_spec, init_from_teacher


def test_student_keeps_teacher_blocks_bk_sdm_style():
    kw = dict(width=0.1, sample_size=16, cross_attention_dim=24)
    teacher = create("sd15", **kw)
    student, rep = init_from_teacher(teacher, get_spec("snapfusion", **kw))
    copied = dict(rep.copied)
    # Down-1 keeps its two ResNets (indices 0, 2 in the teacher) and drops both transformers.
    assert copied[("down", 0, 0)] == ("down", 0, 0) and copied[("down", 0, 1)] == ("down", 0, 2)
    assert ("down", 0, 1) in rep.dropped and ("down", 0, 3) in rep.dropped
    for s_key, t_key in rep.copied:
        for (n, p), (_, q) in zip(student.block(s_key).named_parameters(), teacher.block(t_key).named_parameters()):
            assert torch.equal(p, q), (s_key, n)
    # Up-1's extra transformers are copies of the teacher's.
    assert rep.duplicated and all(s[0] == "up" for s, _ in rep.duplicated)
    assert torch.equal(student.conv_in.weight, teacher.conv_in.weight)


def test_identical_spec_copies_everything():
    kw = dict(width=0.1, sample_size=16, cross_attention_dim=24)
    teacher = create("sd15", **kw).eval()
    student, rep = init_from_teacher(teacher, teacher.spec)
    assert not rep.new and not rep.dropped and not rep.duplicated
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 24)
    with torch.no_grad():
        assert torch.equal(student.eval()(x, 5, c).sample, teacher(x, 5, c).sample)


def test_skipped_blocks_are_identity():
    m = create("sd15", width=0.1, sample_size=16, cross_attention_dim=24).eval()
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 24)
    drop = m.droppable()
    assert ("down", 0, 1) in drop and ("up", 0, 0) not in drop  # a res block that merges a skip never drops
    with torch.no_grad():
        a = m(x, 5, c).sample
        m.skipped = set(drop)
        b = m(x, 5, c).sample
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_blocks_of_another_shape_start_from_sliced_teacher_blocks():
    # MobileDiffusion at the teacher's width: no transformer fits a teacher block (shared K/V, Swish-GLU x3, another
    # width at the innermost level), so each takes the teacher block of its kind at its position, cut to its shapes.
    kw = dict(width=0.1, sample_size=16, cross_attention_dim=24)
    teacher = create("sd15", **kw)
    spec = get_spec("mobilediffusion", **kw)
    student, rep = init_from_teacher(teacher, spec)
    assert spec.channels[-1] == 104 and not rep.new and len(rep.partial) == 24
    part = dict(rep.partial)
    assert part[("mid", 2, 10)] == ("mid", 3, 1)  # the bottleneck's transformers all start from the teacher's mid one
    s, t = student.block(("mid", 2, 0)).transformer_blocks[0], teacher.block(("mid", 3, 1)).transformer_blocks[0]
    assert torch.equal(s.attn2.to_q.weight, t.attn2.to_q.weight[:104, :104])
    assert torch.equal(s.attn1.to_kv.weight, t.attn1.to_v.weight[:104, :104])  # shared K/V: the teacher's V
    inner_s, inner_t = int(104 * 3), 128 * 4
    value_s, gate_s = s.ff.net[0].proj.weight.chunk(2)
    value_t, gate_t = t.ff.net[0].proj.weight.chunk(2)
    torch.testing.assert_close(value_s, value_t[:inner_s, :104] / 1.702)  # GEGLU -> Swish-GLU: SiLU(1.702 z) ~ 1.702 GELU(z)
    torch.testing.assert_close(gate_s, gate_t[:inner_s, :104] * 1.702)
    assert inner_s < inner_t
    # an up-path ResNet's input is [h, skip]: each part keeps its own leading channels (student 104 + 104, teacher
    # 128 + 128)
    rs, rt = student.block(("up", 2, 0)), teacher.block(("up", 2, 0))
    assert torch.equal(rs.norm1.weight[:104], rt.norm1.weight[:104])
    assert torch.equal(rs.norm1.weight[104:], rt.norm1.weight[128:232])
    assert torch.equal(rs.conv_shortcut.weight[:, 104:], rt.conv_shortcut.weight[:104, 128:232])
    _, fresh = init_from_teacher(teacher, spec, partial=False)
    assert not fresh.partial and len(fresh.new) == 24


def test_student_spec_keeps_the_teachers_head_width_and_norm_groups():
    # the shipped teacher: SD-1.5 at width 0.1 (32, 64, 128, 128), head width 16, 32 GroupNorm groups. MobileDiffusion
    # (320, 640, 1024) at the same width: 1024 x 0.1 = 102.4 -> 96, the nearest multiple of 16 and 32
    from dataclasses import replace

    from pocketdiff.models import student_spec

    teacher = get_spec("sd15", width=0.1, sample_size=16, cross_attention_dim=128)
    fix = lambda b: replace(b, heads=None, head_dim=16) if b.kind == "tf" else b  # noqa: E731
    teacher = teacher.replace(down=tuple(tuple(fix(b) for b in lv) for lv in teacher.down),
                              mid=tuple(fix(b) for b in teacher.mid), up=tuple(tuple(fix(b) for b in lv) for lv in teacher.up))
    assert teacher.channels == (32, 64, 128, 128) and teacher.norm_groups == 32
    spec = student_spec("mobilediffusion", teacher)
    assert spec.channels == (32, 64, 96) and spec.norm_groups == 32
    assert {b.head_dim for *_, b in spec.all_blocks() if b.kind == "tf"} == {16}
    assert student_spec("snapfusion", teacher).channels == (32, 64, 128, 128)
