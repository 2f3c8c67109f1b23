"""TRL drift: every private TRL name TGRLTrainer relies on exists with the parameters it
expects, our overrides keep TRL's signatures, and an untested TRL major.minor stops construction with a
message that names the tested version and the explicit override."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import trl
from trl import GRPOTrainer

from tgrl import trl_compat
from tgrl.trainer import TGRLConfig, TGRLTrainer
from tgrl.trl_compat import (
    ATTRIBUTES,
    METHODS,
    OVERRIDE_ENV,
    TESTED_TRL,
    check_trl_version,
    contract_problems,
)
from tgrl.utils import UserError


def test_installed_trl_is_the_tested_one_and_the_contract_holds():
    assert ".".join(trl.__version__.split(".")[:2]) == TESTED_TRL
    assert contract_problems() == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_our_overrides_keep_trls_signatures(name):
    ours = TGRLTrainer.__dict__.get(name)
    if ours is None:  # only called, not overridden
        return
    params = tuple(p for p in inspect.signature(ours).parameters if p != "self")
    assert (
        params
        == METHODS[name]
        == tuple(p for p in inspect.signature(getattr(GRPOTrainer, name)).parameters if p != "self")
    )


def _args(tmp_path):
    return TGRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], num_generations=2)


def test_untested_trl_stops_construction_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    with pytest.raises(UserError) as err:
        TGRLTrainer(model=None, reward_funcs=[], args=_args(tmp_path))  # refused before anything is built
    message = str(err.value)
    assert f"TRL {TESTED_TRL}.x" in message and "1.17.0" in message and OVERRIDE_ENV in message
    assert "_generate_single_turn" in message


def test_explicit_override_allows_an_untested_trl_when_the_contract_holds(monkeypatch):
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    with pytest.warns(UserWarning, match="untested TRL 1.17.0") as caught:
        check_trl_version("1.17.0")
    assert "PR #6718" in str(caught[0].message)  # the TRL change that retires the vLLM placeholder workaround
    check_trl_version(f"{TESTED_TRL}.9")  # a patch release of the tested minor passes silently


def test_override_still_fails_when_a_private_name_moved(monkeypatch):
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    monkeypatch.delattr(GRPOTrainer, "_calculate_rewards")
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", lambda self, model, inputs, num_items=None: None)
    problems = contract_problems()
    assert "GRPOTrainer._calculate_rewards is gone" in problems
    assert any(p.startswith("GRPOTrainer._compute_loss") for p in problems)
    with pytest.raises(UserError, match="_calculate_rewards is gone"):
        check_trl_version("1.17.0")


def test_a_function_with_new_parameters_is_reported(monkeypatch):
    import trl.trainer.utils

    monkeypatch.setattr(trl.trainer.utils, "split_pixel_values_by_grid", lambda batch, layout: batch)
    assert any("split_pixel_values_by_grid" in p for p in contract_problems())


def test_missing_trainer_attributes_are_named():
    trainer = SimpleNamespace(**{name: None for name in ATTRIBUTES if name != "_metrics"})
    trainer.use_vllm = True
    with pytest.raises(UserError) as err:
        trl_compat.check_trainer_attributes(trainer)
    assert "_metrics" in str(err.value) and "vllm_generation" in str(err.value)
