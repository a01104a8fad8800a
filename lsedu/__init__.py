"""lsedu: model merging, from model soups to Localize-and-Stitch.

The library behind the lsedu book. Every merge is a pure function over state
dicts (``dict[str, torch.Tensor]``): inputs are never modified and a new state
dict is returned. Modules follow the book's chapters; no module shares its name
with a function (``lsedu.task_arithmetic`` and ``lsedu.dare`` are functions):

=====================  ===============================================  ========
module                 what                                             notebook
=====================  ===============================================  ========
``task_vectors``       ``TaskVector``, ``select``, ``cosine_similarity``  00, 03
``curves``             ``sweep_line``, ``LineSweep``                     01, 02
``soups``              ``uniform_soup``, ``greedy_soup``                 02
``arithmetic``         ``task_arithmetic``, ``pick_lambda``              03
``ties``               ``trim``, ``elect_sign``, ``disjoint_mean``,      04
                       ``ties_merge``
``drop_rescale``       ``dare``, ``dare_merge``                          04
``localize_stitch``    ``localize_dataless``, ``localize_trained``,      05
                       ``stitch``, ``stitch_dataless``,
                       ``localize_random`` (a control)
``analysis``           ``mask_overlap``, ``density_per_layer``,          04, 05
                       ``sign_conflicts``, ``storage``
``topk``               exact global top-k in O(largest tensor) memory    04, 05
``consensus``          ``tall_masks``, ``consensus_merge``               book
``isotropic``          ``iso_c_merge``                                   book
``adamerging``         ``adamerging``, ``prediction_entropy``            book
``data_aware``         ``fisher_merge``, ``regmean_merge`` and the       book
                       statistics they need (``diagonal_fisher``,
                       ``gram_matrices``)
``methods``            the registry: each method's name, function,       book
                       parameters and defaults, data, label, grid
``conventions``        the reference tools' rules by name (TIES repo,    book
                       Localize-and-Stitch repo, peft, mergekit)
``merge``              ``lsedu merge``: streamed merges of checkpoints   appendix
                       larger than memory (``merge``, ``Checkpoint``)
``explore``            the sparsity and overlap explorers (widgets)      05
``casestudy``          ``comparison_table``, ``run_rows``,                06-09
                       ``paired_differences``, ``verdict``,
                       ``scaling_curve``, ``scaling_verdict``
``stats``              ``paired_bootstrap``: intervals for differences    06-09
                       between methods scored on the same items;
                       ``format_difference``, ``describe``
``exercises``          ``check_*`` for the exercises                      02-05
=====================  ===============================================  ========
"""

from . import exercises  # noqa: F401  (the notebooks' check cells call lsedu.exercises.check_*)
from .analysis import (
    Overlap,
    SignConflicts,
    Storage,
    density,
    density_per_layer,
    density_per_tensor,
    mask_overlap,
    sign_conflicts,
    storage,
)
from .drop_rescale import dare, dare_merge
from .localize_stitch import localize_dataless, localize_random, localize_trained, stitch, stitch_dataless
from .soups import GreedySoup, greedy_soup, uniform_soup
from .arithmetic import DEFAULT_GRID, LambdaSearch, pick_lambda, task_arithmetic
from .task_vectors import TaskVector, cosine_similarity, select
from .ties import disjoint_mean, elect_sign, ties_merge, trim
from .topk import global_topk_mask, kth_largest, per_tensor_topk_mask, topk_mask
from .utils import get_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GRID",
    "GreedySoup",
    "LambdaSearch",
    "Overlap",
    "SignConflicts",
    "Storage",
    "TaskVector",
    "cosine_similarity",
    "dare",
    "dare_merge",
    "density",
    "density_per_layer",
    "density_per_tensor",
    "disjoint_mean",
    "elect_sign",
    "get_device",
    "global_topk_mask",
    "greedy_soup",
    "kth_largest",
    "localize_dataless",
    "localize_random",
    "localize_trained",
    "mask_overlap",
    "per_tensor_topk_mask",
    "pick_lambda",
    "seed_everything",
    "select",
    "sign_conflicts",
    "stitch",
    "stitch_dataless",
    "storage",
    "task_arithmetic",
    "ties_merge",
    "topk_mask",
    "trim",
    "uniform_soup",
]
