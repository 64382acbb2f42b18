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
