"""The one function from a run's recipe to its network: the launcher's workers, the checkpoint-size check, the
report's figures, --test-only, classify/export, the ablation, the GPU check's fed replica and the benchmarks build
AlexNet here (the GPU check's model steps compare the model's forms themselves, and build them directly)."""
from model import AlexNet, GroupedAlexNet


def build_model(recipe, *, grouped=False, lrn_impl="fast"):
    """The net `recipe` describes (a cluster.recipe.TrainConfig, or anything with its num_classes, activation, lrn,
    overlapping_pool, dropout and init), initialised by its init, on the CPU (or under a `torch.device` context).

    grouped=False: the paper's two columns (AlexNet; the caller place()s them on its devices); True: the same net on
    one device with grouped convolutions (GroupedAlexNet: the figures and --test-only). The two share one
    state_dict layout. lrn_impl: the LRN's implementation, a speed choice (model/lrn.py), not part of the recipe."""
    net = GroupedAlexNet if grouped else AlexNet
    return net(recipe.num_classes, activation=recipe.activation, lrn=recipe.lrn,
               overlapping_pool=recipe.overlapping_pool, dropout=recipe.dropout, init=recipe.init, lrn_impl=lrn_impl)
