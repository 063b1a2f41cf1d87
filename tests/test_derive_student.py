"""A student cut from a teacher (`models.derive_student`), on a tiny Llama built from a config: the
kept layers are the teacher's chosen layers in the order given, everything else is the teacher's,
and a list that names no valid set of layers is refused with the key to fix."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def teacher():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=5,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,  # the head is its own tensor, so copying it is checked on its own
    )
    model = LlamaForCausalLM(config)
    # Every layer's weights made unlike every other's (a fresh init can repeat constant tensors such
    # as norms), so a wrong layer in a slot cannot pass for the right one.
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for p in layer.parameters():
                p.add_(i + 1)
    return model


@pytest.mark.parametrize("keep", [[0, 2, 4], [3, 1], [4]])
def test_the_student_holds_the_chosen_teacher_layers_in_order_and_the_rest_unchanged(teacher, keep):
    import torch

    from s2d_pipeline.models import derive_student

    student = derive_student(teacher, keep)
    assert student.config.num_hidden_layers == len(student.model.layers) == len(keep)
    for new, old in enumerate(keep):
        mine, theirs = student.model.layers[new].state_dict(), teacher.model.layers[old].state_dict()
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert torch.equal(mine[name], theirs[name]), f"student layer {new}.{name} is not teacher layer {old}'s"
    outside = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= outside.keys()
    student_state = student.state_dict()
    for name, value in outside.items():
        assert torch.equal(student_state[name], value), name
    assert student.generation_config is teacher.generation_config
    # The cut model runs: next-token logits over the teacher's whole vocabulary.
    logits = student(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, teacher.config.vocab_size)


@pytest.mark.parametrize("keep", [[], [0, 5], [-1, 2], [1, 1, 3]], ids=["empty", "past-the-end", "negative", "twice"])
def test_keep_layers_that_are_not_distinct_teacher_layers_are_refused(teacher, keep):
    from s2d_pipeline.errors import ConfigError
    from s2d_pipeline.models import derive_student

    with pytest.raises(ConfigError) as refused:
        derive_student(teacher, keep)
    message = str(refused.value)
    assert "models.student.keep_layers" in message and str(keep) in message and "[0, 4]" in message
