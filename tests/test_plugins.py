"""Plug-ins are checked against their contract before data is made or a network trained (issue 25, item 3)."""

import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.experiment import run_experiment
from manifoldtrain.nn import MLPConfig, build_model, verify_activation
from manifoldtrain.objectives import DerivativeTerm, Objective
from manifoldtrain.testing import verify_manifold
from manifoldtrain.training import TrainConfig

from plugin_helpers import FixedInput, OneOutput, VectorTerm, WrongCoords, WrongTanh, WrongTarget
from toy_manifolds import Blob


def _config(**kw):
    base = dict(manifold=Blob(size=5), data=DataConfig(n_train=8, n_test=4), model=MLPConfig(hidden=(4,)),
                objective=Objective.first_order(), train=TrainConfig(epochs=1, batch_size=8, progress=False))
    return ExperimentConfig(**(base | kw))



@pytest.mark.parametrize("manifold, pattern", [
    (WrongTarget(size=5), r"manifold: .*WrongTarget breaks the Manifold contract: target\(torch.float32\): expected shape \[2, 3\], got \[2, 2\]"),
    (WrongCoords(size=5), r"manifold: .*WrongCoords .*jets\(order=1\) input\[1\].*expected shape \[2, 2, 5, 5\], got \[2, 3, 5, 5\]"),
])
def test_a_manifold_that_breaks_its_contract_is_refused_before_any_data(manifold, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern):
        run_experiment(_config(manifold=manifold), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("model, pattern", [
    (OneOutput(), r"model: the network that OneOutput.layers\(input_shape=\(5, 5\), n_outputs=2\) built gives outputs \[1\]"),
    (FixedInput(), r"model: the network that FixedInput.* cannot take inputs \[n, 5, 5\]"),
])
def test_a_model_built_for_other_shapes_is_refused_before_the_data(model, pattern, tmp_path, monkeypatch):
    import manifoldtrain.experiment as experiment

    monkeypatch.setattr(experiment, "_make_data", lambda *a, **k: pytest.fail("data made before the model check"))
    with pytest.raises(ValueError, match=pattern):
        run_experiment(_config(model=model), tmp_path / "run")


def test_build_model_refuses_a_network_of_the_wrong_number_of_outputs():
    x, y = torch.randn(4, 5, 5), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"config: .*gives outputs \[1\] per sample; expected \[3\]"):
        build_model(OneOutput(), x, y)
    assert build_model(MLPConfig(hidden=(4,)), x, y)(x).shape == (4, 3)


def test_an_activation_with_wrong_derivatives_is_refused_on_load(monkeypatch):
    import sys
    import types

    module = types.ModuleType("wrong_act_mod")
    module.WrongTanh = WrongTanh
    monkeypatch.setitem(sys.modules, "wrong_act_mod", module)
    with pytest.raises(ValueError, match=r"activation: 'wrong_act_mod:WrongTanh': its closed-form derivatives.*f'' off by"):
        MLPConfig(activation="wrong_act_mod:WrongTanh")


def test_a_term_whose_loss_is_not_a_scalar_is_named(tmp_path):
    objective = Objective((VectorTerm(), DerivativeTerm(order=1)))
    with pytest.raises(ValueError, match=r"objective: term 'value' \(VectorTerm.loss\) returned shape \[8, 2\]; expected a scalar"):
        run_experiment(_config(objective=objective), tmp_path / "run")


def test_generate_refuses_a_broken_manifold_before_writing(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_blob.py").write_text("from plugin_helpers import WrongTarget\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["generate", "broken_blob:WrongTarget", "--n", "2", "--out", str(tmp_path / "j"), "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "MANIFOLD: plugin_helpers:WrongTarget breaks the Manifold contract" in err, err
    assert not (tmp_path / "j").exists()


def test_a_correct_plugin_passes():
    verify_manifold(Blob(size=5))
    cls = type("GoodTanh", (WrongTanh,), {"derivatives": lambda self, v: (torch.tanh(v), 1 - torch.tanh(v) ** 2,
                                                                       -2 * torch.tanh(v) * (1 - torch.tanh(v) ** 2))})
    verify_activation(cls, "activation")


def test_a_data_source_of_other_shapes_is_refused_before_training(tmp_path):
    config = _config(data=DataConfig(n_train=8, n_test=4, source="plugin_helpers:OneTargetSource"))
    with pytest.raises(ValueError, match=r"data.source: plugin_helpers:OneTargetSource: its batch\(\) gives targets \[1\] "
                                         r"per sample; the manifold Blob \(and the test set\) has \[2\]"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
