"""The --moe-* flags parsed once: MoESettings from checkpoint-style args (strings)."""

import argparse
import copy
import dataclasses

import pytest

from fairseq_taskmoe.config import (
    ROUTING_CHOICES, SECOND_EXPERT_CHOICES, MoEConfig, MoESettings, moe_config_from_args,
    split_task_names,
)
from fairseq_taskmoe.moe.routing import ROUTINGS, SECOND_POLICIES


def settings(**flags):
    return moe_config_from_args(argparse.Namespace(**flags))


def test_fields_are_typed_once_and_args_stay_as_stored():
    args = argparse.Namespace(moe_task_names="de,fr,", moe_top_k=1, moe_decoder_routing="sentence",
                              moe_layout='{"decoder": {"1": {"ffn_dim": 96}}, "encoder": {}}')
    before = copy.deepcopy(vars(args))
    cfg = moe_config_from_args(args)
    assert vars(args) == before  # checkpoint args keep their strings
    assert cfg.task_names == ("de", "fr") and cfg.top_k == 1
    assert cfg.routing("encoder") == "token" and cfg.routing("decoder") == "sentence"
    assert type(cfg.routing("decoder")) is str and type(cfg.second_expert_policy) is str
    assert cfg.layout == {"decoder": {1: {"ffn_dim": 96}}, "encoder": {}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 2
    with pytest.raises(ValueError, match="unknown side 'middle'"):
        cfg.routing("middle")


def test_defaults_are_the_dataclass_defaults():
    cfg, flags = settings(), MoEConfig()
    assert (cfg.expert_count, cfg.freq, cfg.top_k, cfg.capacity_factor, cfg.gate_fp32) == (
        flags.moe_expert_count, flags.moe_freq, flags.moe_top_k, flags.moe_capacity_factor,
        flags.moe_gate_fp32)
    assert cfg.layout is None and cfg.task_names == ()
    assert {f.name for f in dataclasses.fields(MoESettings)} == {
        f.name[len("moe_"):] for f in dataclasses.fields(MoEConfig) if f.name.startswith("moe_")}


@pytest.mark.parametrize("flags,encoder,decoder", [
    (dict(moe_freq=2), [None, {"experts": 8}, None, {"experts": 8}], [None, {"experts": 8}, None, {"experts": 8}]),
    (dict(moe_freq=1, moe_expert_count=2, moe_encoder_routing="none"), [None] * 4, [{"experts": 2}] * 4),
    (dict(moe_freq=0), [None] * 4, [None] * 4),
    # a layout overrides --moe-freq; a side it does not name is dense
    (dict(moe_layout='{"decoder": {"0": {"experts": 3}, "3": {"ffn_dim": 64}}}'),
     [None] * 4, [{"experts": 3}, None, None, {"ffn_dim": 64}]),
])
def test_layer_plan(flags, encoder, decoder):
    cfg = settings(**flags)
    assert cfg.layer_plan("encoder", 4) == encoder and cfg.layer_plan("decoder", 4) == decoder


def test_layer_plan_returns_copies():
    cfg = settings(moe_layout='{"encoder": {"1": {"experts": 2}}}')
    cfg.layer_plan("encoder", 2)[1]["experts"] = 99
    assert cfg.layer_plan("encoder", 2)[1] == {"experts": 2}


@pytest.mark.parametrize("layout,match", [
    ("{bad", "--moe-layout is not valid JSON"),
    ("[1]", "--moe-layout: expected a JSON object"),
    ('{"middle": {}}', "--moe-layout: unknown side 'middle'; valid: encoder, decoder"),
    ('{"encoder": [1]}', "--moe-layout encoder: expected an object of layers"),
    ('{"encoder": {"x": {"experts": 2}}}', "--moe-layout encoder layer 'x': the layer index must be"),
    ('{"encoder": {"01": {"experts": 2}}}', "--moe-layout encoder layer '01': the layer index must be"),
    ('{"encoder": {"1": {"experts": 2, "ffn_dim": 8}}}', "--moe-layout encoder layer 1: expected"),
])
def test_bad_layout_is_a_clear_error(layout, match):
    with pytest.raises(ValueError, match=match):
        settings(moe_layout=layout)


def test_one_definition_of_each_choice_list():
    assert [str(c) for c in ROUTING_CHOICES] == [*ROUTINGS, "none"]
    assert [str(c) for c in SECOND_EXPERT_CHOICES] == list(SECOND_POLICIES)


@pytest.mark.parametrize("text,names", [("", ()), (None, ()), ("de", ("de",)), ("en-de,,en-fr", ("en-de", "en-fr"))])
def test_split_task_names(text, names):
    assert split_task_names(text) == names
