"""The mitigation-method contract, run over every registered method (built-ins and any method a
test module registered before this one was collected).

The battery itself is :func:`ravl.mitigation.checks.check_mitigation_method`: registry entry and
config round trip, finite losses, a loadable checkpoint recording the method and its config,
exact resumption of a finished run, deterministic weights.
"""

import pytest

from ravl.mitigation.checks import MitigationContractError, check_mitigation_method
from ravl.mitigation.registry import list_mitigation_methods
from ravl.training.loop import FinetuneConfig

CFG = FinetuneConfig(epochs=1, batch_size=16, val_split=None)


@pytest.mark.parametrize("name", list_mitigation_methods())
def test_every_registered_method_meets_the_contract(name, mitigation_env, mitigation_labelling, tmp_path):
    env = mitigation_env
    res = check_mitigation_method(name, checkpoint=env["ckpt"], train=env["train"], discovery=env["discovery"],
                                  work_dir=tmp_path, config=CFG, labelling=mitigation_labelling)
    assert res.method == name


def test_the_contract_catches_a_nondeterministic_method(mitigation_env, mitigation_labelling, tmp_path):
    """The check can fail: a method drawing from the global RNG is caught."""
    import torch

    from ravl.mitigation.registry import MITIGATION_METHODS, MitigationPlan, register_mitigation_method
    from ravl.training.loop import ContrastiveObjective

    @register_mitigation_method("unseeded-order", needs_feature=False)
    def _unseeded(ctx, config):
        n = len(ctx.train)
        return MitigationPlan(ContrastiveObjective(), epoch_order=lambda epoch: torch.randperm(n))

    env = mitigation_env
    try:
        with pytest.raises(MitigationContractError, match="not deterministic"):
            check_mitigation_method("unseeded-order", checkpoint=env["ckpt"], train=env["train"],
                                    discovery=env["discovery"], work_dir=tmp_path, config=CFG,
                                    labelling=mitigation_labelling)
    finally:
        MITIGATION_METHODS.unregister("unseeded-order")
